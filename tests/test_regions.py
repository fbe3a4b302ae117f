"""Mode ``regions``: models that do not trace as a whole are converted in graph mode part by part."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import octswap
from octswap.cli import app
from octswap.flops import count_cost
from tests.nets import Block, Encoder, GatedBlock, TinyResNet, pyramid_detector, branching_segmenter, untraceable

SHAPE = (3, 32, 32)
SIZES = ((32, 32), (48, 64), (64, 40))  # all divisible by the segmenter's stride 4


def _layer_mode(plan: octswap.Plan) -> list[str]:
    return [d.name for d in plan.octave_layers if d.reason.startswith("layer mode")]


def test_a_size_checked_model_converts_region_by_region(caplog):
    model = branching_segmenter().eval()
    with caplog.at_level(logging.WARNING, logger="octswap"):
        converted, plan = octswap.convert(model, alpha=0.5, input_shape=SHAPE)
    assert plan.mode == "regions"
    assert [r["path"] for r in plan.regions] == ["encoder", "decoder"]
    assert all("control flow" in r["stopped"] for r in plan.regions)
    assert not _layer_mode(plan) and len(plan.octave_layers) >= 6
    assert isinstance(converted.encoder, torch.fx.GraphModule) and isinstance(converted.decoder, torch.fx.GraphModule)
    warnings = [r.getMessage() for r in caplog.records if "regions" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0] in plan.warnings
    # The parent reads the region's attributes; the model keeps its own size check.
    assert converted.encoder.out_channels == (32, 32)
    with torch.no_grad():
        for h, w in SIZES:
            x = torch.randn(2, 3, h, w)
            assert converted(x).shape == model(x).shape == (2, 4, h, w)
        with pytest.raises(RuntimeError, match="not divisible by 4"):
            converted(torch.randn(1, 3, 30, 30))
    x = torch.randn(1, 3, 64, 64)
    assert count_cost(converted, x).flops < 0.8 * count_cost(model, x).flops


def test_a_region_computes_what_its_module_converted_alone_computes():
    """The encoder region against graph mode on the encoder as a model of its own."""
    model = branching_segmenter().eval()
    converted, plan = octswap.convert(model, alpha=0.5, input_shape=SHAPE)
    alone, alone_plan = octswap.convert(model.encoder, alpha=0.5, input_shape=SHAPE, mode="graph")
    regional = [d for d in plan.layers if d.name.startswith("encoder.")]
    assert [(d.name.removeprefix("encoder."), d.in_low, d.out_low) for d in regional] == [
        (d.name, d.in_low, d.out_low) for d in alone_plan.layers
    ]
    x = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        for got, want in zip(converted.encoder(x), alone(x)):
            torch.testing.assert_close(got, want)


def test_a_shared_head_converts_once_with_the_same_split_at_every_level():
    model = pyramid_detector().eval()
    converted, plan = octswap.convert(model, alpha=0.5, input_shape=SHAPE)
    assert plan.mode == "regions" and [r["path"] for r in plan.regions] == ["encoder", "head"]
    head = {d.name: d for d in plan.layers if d.name.startswith("head.")}
    assert set(head) == {"head.conv.0", "head.predict"}
    assert all(d.action == "octave" and d.site.calls == 2 for d in head.values())
    assert head["head.conv.0"].out_low == head["head.predict"].in_low > 0
    first, predict = converted.head.get_submodule("conv.0"), converted.head.get_submodule("predict")
    assert isinstance(first, octswap.OctaveConv2d) and isinstance(predict, octswap.OctaveConv2d)
    features = [torch.randn(1, 32, 16, 16), torch.randn(1, 32, 8, 8)]
    with torch.no_grad():
        levels = converted.head(features)
        for level, f in zip(levels, features):
            high, low = first(f)  # reference: the same two octave modules, level by level
            torch.testing.assert_close(level, predict((torch.relu(high), torch.relu(low))))
        for h, w in SIZES:
            x = torch.randn(2, 3, h, w)
            got, want = converted(x), model(x)
            shapes = [[{k: v.shape for k, v in d.items()} for d in out] for out in (got, want)]
            assert shapes[0] == shapes[1]


class GatedMiddle(TinyResNet):
    """A traceable top level around one block that does not trace."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = GatedBlock(16, 32, 1)
        self.layer2 = Block(32, 32, 2)


def test_the_parent_is_traced_around_a_child_that_does_not_trace():
    model = GatedMiddle().eval()
    converted, plan = octswap.convert(model, alpha=0.5, input_shape=SHAPE)
    assert plan.mode == "regions" and [(r["path"], r["opaque"]) for r in plan.regions] == [("", ["layer1"])]
    assert isinstance(converted, torch.fx.GraphModule) and isinstance(converted.layer1, GatedBlock)
    assert sorted(_layer_mode(plan)) == ["layer1.conv1", "layer1.conv2", "layer1.shortcut"]
    layer1 = [d for d in plan.layers if d.name.startswith("layer1.")]
    assert all("layer1 stays out of graph mode (TraceError" in d.reason for d in layer1)
    graph = [d for d in plan.octave_layers if d.name.startswith("layer2.")]
    assert graph and all(not d.reason.startswith("layer mode") for d in graph)
    with torch.no_grad():
        for h, w in ((16, 16), (17, 23), (32, 9)):
            assert converted(torch.randn(2, 3, h, w)).shape == (2, 10)


def test_nothing_traceable_falls_back_to_layer_mode_with_one_warning(caplog):
    model = untraceable().eval()
    with caplog.at_level(logging.WARNING, logger="octswap"):
        converted, plan = octswap.convert(model, alpha=0.5, input_shape=SHAPE)
    assert plan.mode == "layer" and not plan.regions and plan.octave_layers
    messages = [r.getMessage() for r in caplog.records if "layer mode" in r.getMessage()]
    assert len(messages) == 1 and "no part of the model that holds a conv traces" in messages[0]
    with torch.no_grad():
        assert converted(torch.randn(1, *SHAPE)).shape == (1, 10)


@pytest.mark.parametrize("factory", ["branching_segmenter", "pyramid_detector"])
def test_checkpoints_replay_the_regions_exactly(tmp_path, factory):
    model, source = octswap.load_model(f"tests.nets:{factory}")
    converted, plan = octswap.convert(model, alpha=0.5, input_shape=SHAPE)
    path = octswap.save(tmp_path / "m.pt", converted, plan, source=source)
    loaded = octswap.load(path, allow_import=True)
    assert octswap.checkpoint.read(path).plan.regions == plan.regions
    x = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        got, want = loaded(x), converted.eval()(x)
    for a, b in zip(octswap.plan.output_tensors(got), octswap.plan.output_tensors(want)):
        assert torch.equal(a, b)


def test_cli_plan_lists_the_regions_and_graph_mode_still_means_the_whole_model():
    runner = CliRunner()
    result = runner.invoke(app, ["plan", "tests.nets:branching_segmenter", "--input-size", "32", "-f", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mode"] == "regions" and [r["path"] for r in data["regions"]] == ["encoder", "decoder"]
    assert all(r["convs"] > 0 for r in data["regions"])
    table = runner.invoke(app, ["plan", "tests.nets:branching_segmenter", "--input-size", "32"])
    assert table.exit_code == 0 and "graph-mode regions" in table.stdout
    graph = runner.invoke(app, ["plan", "tests.nets:branching_segmenter", "--input-size", "32", "--mode", "graph"])
    assert graph.exit_code == 1 and "does not trace with torch.fx" in graph.stderr


def test_convert_and_report_name_the_regions(tmp_path):
    runner = CliRunner()
    ckpt = tmp_path / "m.pt"
    converted = runner.invoke(app, ["convert", "tests.nets:branching_segmenter", "-s", "32", "-o", str(ckpt),
                                    "-f", "json"])  # fmt: skip
    assert converted.exit_code == 0, converted.output
    regions = json.loads(converted.stdout)["regions"]
    assert [r["path"] for r in regions] == ["encoder", "decoder"]
    plan = octswap.read_checkpoint(ckpt).plan
    assert sum(r["convs"] for r in regions) == len(plan.octave_layers)
    report = runner.invoke(app, ["report", str(ckpt), "--allow-import", "--no-layers"])
    assert report.exit_code == 0, report.output
    line = next(line for line in report.stdout.splitlines() if line.startswith("Graph-mode regions"))
    assert "encoder (" in line and "decoder (" in line
    markdown = runner.invoke(app, ["report", str(ckpt), "--allow-import", "--no-layers", "-f", "markdown"])
    assert "Graph-mode regions" in markdown.stdout


def test_regions_mode_refuses_a_model_where_nothing_traces():
    with pytest.raises(octswap.ConversionError, match="no part of the model"):
        octswap.convert(untraceable().eval(), alpha=0.5, input_shape=SHAPE, mode="regions")


class Lister(nn.Module):
    """A parent whose forward hands a child a dict of maps (torchvision's FPN takes one)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 32, 3, padding=1)
        self.b = DictBody()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = {"p": self.a(x)}
        out = self.b(feats)
        return out if out.mean() < 1e6 else out * 0  # data-dependent: the top level does not trace


class DictBody(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(32, 32, 3, padding=1)
        self.d = nn.Conv2d(32, 32, 3, padding=1)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.d(torch.relu(self.c(feats["p"])))


def test_a_region_taking_a_dict_traces_with_its_structure():
    model = Lister().eval()
    converted, plan = octswap.convert(model, alpha=0.5, input_shape=SHAPE)
    assert plan.mode == "regions" and [r["path"] for r in plan.regions] == ["b"]
    assert {d.name: (d.in_low, d.out_low) for d in plan.octave_layers} == {"b.c": (0, 16), "b.d": (16, 0)}
    with torch.no_grad():
        assert converted(torch.randn(1, 3, 20, 12)).shape == (1, 32, 20, 12)


@pytest.mark.parametrize("model", [pytest.param("tests.nets:branching_segmenter", marks=pytest.mark.slow),
                                   "tests.nets:pyramid_detector"])  # fmt: skip
def test_bench_and_report_latency_work_on_dense_outputs(tmp_path, model):
    """Outputs that are lists of dicts (maps at the input size under `slow`); a checkpoint of them too."""
    runner = CliRunner()
    bench = runner.invoke(app, ["bench", model, "-s", "32", "-a", "0.5", "--batch", "1", "--rounds", "1", "-f", "json"])
    assert bench.exit_code == 0, bench.output
    data = json.loads(bench.stdout)
    assert data["latency"][0]["ratio"] > 0 and 0 < data["flops_ratio"] < 1
    ckpt = tmp_path / "m.pt"
    assert runner.invoke(app, ["convert", model, "-s", "32", "-a", "0.5", "-o", str(ckpt)]).exit_code == 0
    report = runner.invoke(app, ["report", str(ckpt), "--allow-import", "--latency", "--batch", "1", "--rounds", "1",
                                 "-f", "json", "--no-layers"])  # fmt: skip
    assert report.exit_code == 0, report.output
    assert json.loads(report.stdout)["latency"][0]["ratio"] > 0
    # A checkpoint is timed at another size too; one its original does not run at is one line, exit 2.
    other = runner.invoke(app, ["bench", str(ckpt), "--allow-import", "-s", "64", "--batch", "1", "--rounds", "1",
                                "-f", "json"])  # fmt: skip
    assert other.exit_code == 0, other.output
    assert json.loads(other.stdout)["latency"][0]["ratio"] > 0
    bad = runner.invoke(app, ["bench", str(ckpt), "--allow-import", "-s", "1x64x64", "--batch", "1", "--rounds", "1"])
    assert bad.exit_code == 2 and "does not run on an input of shape 1x1x64x64" in bad.stderr


class NormedHead(nn.Module):
    """FCOS-style: conv -> GroupNorm -> ReLU -> predict, all shared by every level of a list."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(32, 32, 3, padding=1)
        self.norm = nn.GroupNorm(4, 32)
        self.predict = nn.Conv2d(32, 32, 3, padding=1)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.predict(torch.relu(self.norm(self.conv(f)))) for f in features]


class NormedDetector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.head = NormedHead()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = self.head(self.encoder(x))
        return [] if levels[0].mean() > 1e6 else levels  # data-dependent: the top level does not trace


def test_a_shared_norm_runs_per_branch_at_every_level():
    model = NormedDetector().eval()
    converted, plan = octswap.convert(model, alpha=0.5, input_shape=SHAPE)
    assert plan.mode == "regions"
    head = {d.name: d for d in plan.layers if d.name.startswith("head.")}
    assert head["head.conv"].out_low == head["head.predict"].in_low == 16
    assert isinstance(converted.head.get_submodule("norm"), octswap.layers.OctaveChannelwise)
    assert not [b for b in plan.boundaries if b["before"].startswith("head.")], plan.boundaries
    with torch.no_grad():
        for h, w in SIZES:
            x = torch.randn(1, 3, h, w)
            assert [t.shape for t in converted(x)] == [t.shape for t in model(x)]


class Zeroing(nn.Module):
    """Traces, but writes into a conv's output in place: the graph pass cannot keep that on a pair."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(32, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 32, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y.zero_()  # no out-of-place form
        return self.b(y)


class TwoParts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = Block(3, 32, 1)
        self.second = Zeroing()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.second(self.first(x))
        return y if y.mean() < 1e6 else y * 0  # data-dependent: the top level does not trace


def test_a_region_the_graph_pass_cannot_rewrite_goes_to_layer_mode_alone():
    model = TwoParts().eval()
    converted, plan = octswap.convert(model, alpha=0.5, input_shape=SHAPE)
    assert plan.mode == "regions" and [r["path"] for r in plan.regions] == ["first"]
    second = [d for d in plan.octave_layers if d.name.startswith("second.")]
    assert second and all("second stays out of graph mode" in d.reason and "in-place" in d.reason for d in second)
    x = torch.randn(1, 3, 20, 12)
    with torch.no_grad():
        assert converted(x).shape == model(x).shape


def test_bad_arguments_are_one_line_input_errors():
    with pytest.raises(octswap.InputError, match=r"known: auto, graph, regions, layer"):
        octswap.convert(branching_segmenter(), mode="fast")
    with pytest.raises(octswap.InputError, match=r"input_shape must be \(C, H, W\)"):
        octswap.make_plan(branching_segmenter(), input_shape=(224, 224))  # type: ignore[arg-type]
    result = CliRunner().invoke(app, ["plan", "tests.nets:picky", "--model-arg", "name=huge"])
    assert result.exit_code == 2 and "cannot build tests.nets:picky" in result.stderr and "KeyError" in result.stderr
    assert "Traceback" not in result.output


def test_bench_says_when_the_two_models_did_unlike_work():
    from octswap.cli.bench import unequal_work

    class Detections(nn.Module):  # keeps a weight-dependent number of boxes, as detectors do
        def __init__(self, keep: int) -> None:
            super().__init__()
            self.keep = keep

        def forward(self, x):
            return [{"boxes": x.new_zeros(self.keep, 4), "scores": x.new_zeros(self.keep)}]

    x = torch.rand(1, 3, 8, 8)
    assert unequal_work(Detections(5), Detections(5), x) is None
    message = unequal_work(Detections(5), Detections(3), x)
    assert message is not None and "(3, 4) against the original's (5, 4)" in message and "rpn_nms_thresh" in message


class Scorer(nn.Module):
    """A head's last conv with an attribute and a method of its own (as torchvision's
    RetinaNetClassificationHead has ``num_classes`` and ``compute_loss``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(32, 6, 3, padding=1)
        self.weight = 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def loss(self, out: torch.Tensor) -> torch.Tensor:
        return self.weight * out.square().mean()


class LossHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tower = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.scorer = Scorer()
        self.scale = 0.5

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.scorer(self.tower(f)) for f in features]

    def compute_loss(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return self.scale * sum(self.scorer.loss(level) for level in levels)


class LossDetector(nn.Module):
    """Train mode: the head's own loss method (RetinaNet's and FCOS's forward call
    ``self.head.compute_loss``); eval mode: a list of dicts (Python over the batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.head = LossHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[dict[str, torch.Tensor]]:
        levels = self.head(self.encoder(x))
        if self.training:
            return self.head.compute_loss(levels)
        return [{f"level{i}": level[n] for i, level in enumerate(levels)} for n in range(len(x))]


def test_a_converted_part_keeps_the_methods_and_attributes_its_parent_calls():
    model = LossDetector().eval()
    converted, plan = octswap.convert(model, alpha=0.5, input_shape=SHAPE)
    assert plan.mode == "regions" and [r["path"] for r in plan.regions] == ["encoder", "head"]
    assert isinstance(converted.head.get_submodule("scorer.conv"), octswap.OctaveConv2d)
    x = torch.randn(2, 3, 32, 32)
    for copy_of in (lambda m: m, copy.deepcopy):
        student = copy_of(converted).train()
        assert type(student.head).__name__ == "OctaveLossHead"  # the class keeps its name through a deep copy
        assert student.head.scale == 0.5 and student.head.scorer.weight == 2.0
        loss = student(x)
        with torch.no_grad():  # by hand from the converted head's outputs
            levels = student.head(student.encoder(x))
        want = 0.5 * sum(2.0 * level.square().mean() for level in levels)
        torch.testing.assert_close(loss.detach(), want)
        loss.backward()
        assert all(p.grad is not None for p in student.head.get_submodule("scorer.conv").parameters())
    with pytest.raises(RuntimeError, match="traced into its parent's graph"):
        converted.head.scorer(torch.randn(1, 32, 8, 8))
