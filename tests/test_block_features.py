"""Block-feature distillation: which blocks, their outputs in graph and layer mode against
forward hooks on the original and the per-stage drift's taps, the loss by hand, healing with it."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import octswap
from octswap.block_features import block_features, distill_points
from octswap.cli import app
from octswap.data import make_loader, open_data
from octswap.distillation import HealOptions, heal
from octswap.fidelity.taps import GraphTaps
from octswap.losses import make_criterion
from tests.nets import size_checked_segmenter
from tests.resume import assert_resumes_exactly
from tests.scenes import load_scenes, train_segmenter, write_scenes

pytest.importorskip("torchmetrics")
POINTS = ["encoder.stage1", "encoder.stage2", "decoder.lateral", "decoder.smooth", "decoder.classify"]


@pytest.fixture(scope="module")
def segmentation(tmp_path_factory):
    folder = write_scenes(tmp_path_factory.mktemp("seg") / "train", 32, seed=3)
    x, y = load_scenes(folder, (32, 32))
    teacher = train_segmenter(size_checked_segmenter(4), x, y, steps=40)
    converted, plan = octswap.convert(teacher, alpha=0.5, input_shape=(3, 32, 32))
    assert plan.mode == "graph"
    return teacher, converted, open_data(folder, input_shape=(3, 32, 32)), folder, x


def _hooked_outputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen = {}
    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
               for n in names]  # fmt: skip
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


def test_the_blocks_are_the_converted_children_of_top_level_modules(segmentation):
    teacher, converted, *_ = segmentation
    # stem holds no octave conv (the first conv stays plain); decoder.smooth is conv-bn-relu:
    # one block, not three layers; decoder.classify converts (its output merged).
    assert distill_points(converted, teacher) == POINTS
    layer, plan = octswap.convert(teacher, alpha=0.5, input_shape=(3, 32, 32), mode="layer")
    assert plan.mode == "layer"
    assert distill_points(layer, teacher) == [p for p in POINTS if p != "decoder.classify"]  # layer mode keeps it
    assert distill_points(teacher, teacher) == []


def test_graph_mode_block_outputs_match_hooks_and_the_drift_taps(segmentation):
    teacher, converted, *_, x = segmentation
    x = x[:4]
    student, original = block_features(converted, teacher, probe=x[:1])
    with torch.no_grad():
        s, t = student(x), original(x)
        torch.testing.assert_close(s["output"], converted(x))
        torch.testing.assert_close(t["output"], teacher(x))
    assert list(s["features"]) == list(t["features"]) == POINTS
    # The teacher's block outputs are its modules' outputs (forward hooks on the eager model).
    hooked = _hooked_outputs(teacher, POINTS, x)
    for name in POINTS:
        torch.testing.assert_close(t["features"][name], hooked[name])
    # The student's are the converted graph's values there, merged (fx.Interpreter, as the drift runs).
    taps = GraphTaps(teacher, converted, POINTS)
    taps.prepare(x[:1])
    with torch.no_grad():
        _, _, pairs = taps.run(x)
    assert set(pairs) == set(POINTS)
    for name in POINTS:
        torch.testing.assert_close(s["features"][name], pairs[name][0])
    # They share the converted model's weights: a gradient of the features reaches them.
    s = student(x)
    s["features"]["encoder.stage1"].sum().backward()
    assert all(p.grad is not None for p in converted.get_submodule("encoder.stage1.conv1").parameters())


def test_layer_mode_block_outputs_are_hooked(segmentation):
    teacher, _, *_, x = segmentation
    layer, _ = octswap.convert(teacher, alpha=0.5, input_shape=(3, 32, 32), mode="layer")
    student, original = block_features(layer, teacher, probe=x[:1])
    with torch.no_grad():
        s = student(x[:2])
        torch.testing.assert_close(s["output"], layer(x[:2]))
        hooked = _hooked_outputs(layer, ["encoder.stage2"], x[:2])
    torch.testing.assert_close(s["features"]["encoder.stage2"], hooked["encoder.stage2"])
    assert list(original(x[:2])["features"]) == list(s["features"])


def test_the_loss_adds_weighted_block_features_to_the_pixels():
    gen = torch.Generator().manual_seed(0)
    s_out, t_out = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
    s_f, t_f = torch.randn(2, 5, 4, 4, generator=gen), torch.randn(2, 5, 4, 4, generator=gen) * 2
    T, w = 2.0, 0.3
    kl = (t_out / T).softmax(1) * ((t_out / T).log_softmax(1) - (s_out / T).log_softmax(1))
    pixels = float(kl.sum(1).mean()) * T * T
    # normalised MSE: per sample and channel, squared error over the teacher's variance there
    var = t_f.var((2, 3), unbiased=False)
    eps = 1e-3 * (var.mean(1, keepdim=True) + t_f.pow(2).mean((1, 2, 3)).unsqueeze(1)) + 1e-8
    nmse = float(((s_f - t_f).pow(2).mean((2, 3)) / (var + eps)).mean())
    criterion = make_criterion("segmentation", "pixels", temperature=T, feature_weight=w)
    got = criterion({"output": s_out, "features": {"b": s_f}}, {"output": t_out, "features": {"b": t_f}}, None)
    assert float(got) == pytest.approx(pixels + w * nmse, rel=1e-5)


def _block_loss(student, teacher, data, probe):
    s, t = block_features(student, teacher, probe=probe)
    total = 0.0
    with torch.no_grad():
        for x, _ in make_loader(data, batch_size=16, workers=0):
            a, b = s(x)["features"], t(x)["features"]
            total += sum(float((a[k] - b[k]).pow(2).mean() / b[k].var()) for k in b)
    return total


def test_healing_with_block_features_brings_them_closer(segmentation):
    teacher, converted, data, _, x = segmentation
    options = HealOptions(epochs=2, batch_size=8, lr=3e-3, calibrate_bn=0, workers=0, feature_weight=1.0)
    healed = heal(converted, teacher, data, options=options).model
    assert _block_loss(healed, teacher, data, x[:1]) < _block_loss(converted, teacher, data, x[:1])
    # The healed model's own forward is untouched by the wrapping: logits, not the features dict.
    with torch.no_grad():
        assert isinstance(healed(x[:1]), torch.Tensor) and type(healed).__name__ == type(converted).__name__


def test_block_feature_healing_resumes_exactly(segmentation):
    teacher, converted, data, *_ = segmentation
    options = HealOptions(epochs=2, batch_size=8, calibrate_bn=1, workers=0, feature_weight=0.5)  # 4 steps/epoch
    assert_resumes_exactly(converted, teacher, data, options, stop_at=4, where="epoch 2 after step 1 of 4")


def test_block_features_do_not_go_with_feature_distillation(segmentation):
    teacher, converted, data, *_ = segmentation
    with pytest.raises(octswap.InputError, match="--feature-weight"):
        heal(converted, teacher, data, options=HealOptions(distill="features", feature_weight=1.0, epochs=1))
    with pytest.raises(octswap.InputError, match="feature_weight must be >= 0"):
        HealOptions(feature_weight=-1.0)


def test_cli_heals_with_block_features(segmentation, tmp_path):
    teacher, _, _, folder, _ = segmentation
    weights = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), weights)
    ckpt = tmp_path / "c.pt"
    runner = CliRunner()
    done = runner.invoke(app, ["convert", "tests.nets:size_checked_segmenter", "-w", str(weights), "-s", "32",
                               "-a", "0.5", "-o", str(ckpt), "-f", "json"])  # fmt: skip
    assert done.exit_code == 0, done.output
    healed = tmp_path / "h.pt"
    done = runner.invoke(app, ["heal", str(ckpt), "--data", str(folder), "--epochs", "1", "--batch-size", "8",
                               "--feature-weight", "1", "--calibrate-bn", "0", "-o", str(healed), "--allow-import",
                               "--workers", "0", "-f", "json"])  # fmt: skip
    assert done.exit_code == 0, done.output
    record = json.loads(done.stdout)["healing"]
    assert record["options"]["feature_weight"] == 1.0 and len(record["history"]) == 1
    done = runner.invoke(app, ["heal", str(ckpt), "--data", str(folder), "--feature-weight", "1", "--distill",
                               "features", "-o", str(tmp_path / "x.pt"), "--allow-import"])  # fmt: skip
    assert done.exit_code == 2 and "--feature-weight" in done.stderr and not (tmp_path / "x.pt").exists()
