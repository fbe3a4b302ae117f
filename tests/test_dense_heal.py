"""Healing segmentation models and feature outputs: the losses by hand, healing helps, resumes
exactly, runs the same under DDP (gloo), and the command line on masks and detectors."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import octswap
from octswap.cli import app
from octswap.cli.heal import _report_written, healing_view
from octswap.data import Data, make_loader, open_data
from octswap.distillation import HealOptions, heal
from octswap.feature_taps import Tapped
from octswap.healing import HealOutcome, default_features
from octswap.losses import channel_wise_loss, features_loss, pixel_loss
from tests.nets import pyramid_detector, size_checked_segmenter
from tests.processes import heal_one_and_two_processes, octswap_cmd
from tests.resume import assert_resumes_exactly
from tests.scenes import load_scenes, train_segmenter, write_scenes

pytest.importorskip("torchmetrics")
ROOT = Path(__file__).resolve().parent.parent


def _convert_trained(teacher: torch.nn.Module, factory: str, tmp_path: Path, *model_args: str) -> Path:
    """``octswap convert FACTORY`` at 32x32, alpha 0.5, from ``teacher``'s weights, in a child process."""
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    args = [a for arg in model_args for a in ("-m", arg)]
    subprocess.run(octswap_cmd("convert", factory, *args, "-w", tmp_path / "teacher.pt", "-s", "32", "-a", "0.5",
                               "-o", tmp_path / "oct.pt"), check=True, cwd=ROOT, capture_output=True)  # fmt: skip
    return tmp_path / "oct.pt"


# ------------------------------------------------------------------ losses
def test_pixel_and_channel_wise_losses_by_hand():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, 5, generator=gen), torch.randn(2, 3, 4, 5, generator=gen)
    T = 2.0
    # Per pixel: softmax over the 3 classes.
    total = 0.0
    for n in range(2):
        for i in range(4):
            for j in range(5):
                p, q = (t[n, :, i, j] / T).softmax(0), (s[n, :, i, j] / T).softmax(0)
                total += float((p * (p / q).log()).sum())
    assert float(pixel_loss(s, t, T)) == pytest.approx(total / 40 * T * T, rel=1e-5)
    # Channel-wise: softmax over the 20 positions of each channel's map.
    total = 0.0
    for n in range(2):
        for c in range(3):
            p, q = (t[n, c].flatten() / T).softmax(0), (s[n, c].flatten() / T).softmax(0)
            total += float((p * (p / q).log()).sum())
    assert float(channel_wise_loss(s, t, T)) == pytest.approx(total / 6 * T * T, rel=1e-5)
    assert float(pixel_loss(t, t, T)) == pytest.approx(0.0, abs=1e-6)


def test_feature_loss_by_hand():
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen) * 3
    # Per sample and channel: squared error over the teacher's variance of that map, then the mean.
    want = 0.0
    for n in range(2):
        var = [float(t[n, c].var(unbiased=False)) for c in range(3)]
        eps = 1e-3 * (sum(var) / 3 + float(t[n].pow(2).mean())) + 1e-8
        want += sum(float((s[n, c] - t[n, c]).pow(2).mean()) / (var[c] + eps) for c in range(3)) / 6
    assert float(features_loss({"a": s}, {"a": t})) == pytest.approx(want, rel=1e-5)
    # The mean over tensors; identical tensors add 0; the teacher's scale sets the unit.
    assert float(features_loss([s, t], [t, t])) == pytest.approx(want / 2, rel=1e-5)
    # Tensors weigh their positions: a 4x4 map 16, a 2x2 one 4, a vector 1.
    small_s, small_t = s[:, :, :2, :2], t[:, :, :2, :2]
    small = float(features_loss(small_s, small_t))
    vector = float(features_loss(s[:, :, 0, 0], t[:, :, 0, 0]))
    mixed = features_loss({"a": s, "b": small_s, "c": s[:, :, 0, 0]}, {"a": t, "b": small_t, "c": t[:, :, 0, 0]})
    assert float(mixed) == pytest.approx((16 * want + 4 * small + vector) / 21, rel=1e-5)
    assert small != pytest.approx(want, rel=1e-2) and vector != pytest.approx(want, rel=1e-2)
    assert float(features_loss({"a": s * 10}, {"a": t * 10})) == pytest.approx(want, rel=1e-5)
    with pytest.raises(octswap.InputError, match="no output tensor of the same shape"):
        features_loss({"a": s}, {"b": t})


def test_feature_loss_stays_finite_on_a_near_constant_teacher():
    # A feature map that is constant up to rounding (as random-weight detectors give): its
    # variance is ~1e-17, so dividing by it alone made a 1% error a loss of ~1e7.
    gen = torch.Generator().manual_seed(2)
    t = 0.5 + 1e-9 * torch.randn(2, 3, 8, 8, generator=gen)
    s = t * 1.01
    # Per sample: (0.005)^2 over 1e-3 * (mean variance ~0 + mean square 0.25) + 1e-8.
    want = 0.005**2 / (1e-3 * 0.25 + 1e-8)
    assert float(features_loss(s, t)) == pytest.approx(want, rel=1e-3)


# ------------------------------------------------------------------ segmentation
@pytest.fixture(scope="module")
def segmentation(tmp_path_factory):
    folder = write_scenes(tmp_path_factory.mktemp("seg") / "train", 48, seed=1)
    x, y = load_scenes(folder, (32, 32))
    teacher = train_segmenter(size_checked_segmenter(4), x, y, steps=80)
    converted, plan = octswap.convert(teacher, alpha=0.5, input_shape=(3, 32, 32))
    return teacher, converted, plan, open_data(folder, input_shape=(3, 32, 32)), folder


@pytest.mark.parametrize("distill", ["pixels", "cwd"])
def test_heal_raises_pixel_agreement(segmentation, distill):
    teacher, converted, _, data, _ = segmentation
    loader = make_loader(data, batch_size=16, workers=0)
    start = octswap.measure_fidelity(teacher, converted, loader, stages=())
    options = HealOptions(epochs=3, batch_size=16, lr=3e-3, distill=distill, calibrate_bn=0, workers=0)
    result = heal(converted, teacher, data, options=options, val=data)
    end = octswap.measure_fidelity(teacher, result.model, loader, stages=())
    assert start.task == end.task == "segmentation" and result.history[-1].fidelity.task == "segmentation"
    assert end.agreement > start.agreement and end.kl < start.kl
    assert end.segmentation.miou_converted > start.segmentation.miou_converted


def test_heal_on_cropped_views_resumes_exactly(segmentation):
    # The views are drawn from (seed, epoch, step): resuming mid-epoch makes the ones the whole run made.
    teacher, converted, _, data, _ = segmentation
    options = HealOptions(epochs=2, batch_size=16, augment="crop", calibrate_bn=2, workers=0)  # 3 steps/epoch
    assert_resumes_exactly(converted, teacher, data, options, stop_at=3, where="epoch 2 after step 1 of 3")


@pytest.mark.parametrize(("task", "epochs", "batch_size", "advice"), [
    ("segmentation", 3, 6, None),  # 3 x ceil(600 / 6) = 300 updates: enough
    ("segmentation", 3, 7, "batch size 6 gives 300"),  # 3 x 86 = 258
    ("detection", 1, 2, None),  # 300
    ("detection", 1, 64, "batch size 2 gives 300"),  # 10
    ("detection", 2, 2, None),  # 600
    ("segmentation", 1, 1, "more epochs or more data"),  # 200 samples at batch 1: 200, no smaller batch
    ("classification", 1, 64, None),  # 10: classifiers heal in few updates (examples/digits.md)
])
def test_a_dense_heal_with_few_updates_is_warned_about(caplog, task, epochs, batch_size, advice):
    from octswap.training import _warn_few_updates

    samples = 200 if batch_size == 1 else 600
    with caplog.at_level("WARNING", logger="octswap.training"):
        _warn_few_updates(task, samples, HealOptions(epochs=epochs, batch_size=batch_size))
    assert bool(caplog.records) == (advice is not None)
    if advice:
        steps = epochs * math.ceil(samples / batch_size)
        message = caplog.records[0].getMessage()
        assert f": only {steps} updates" in message and advice in message, message
        assert message.startswith(f"{epochs} epoch{'s' if epochs > 1 else ''} of {samples} samples"), message


def test_a_method_that_does_not_fit_the_task(segmentation):
    teacher, converted, _, data, _ = segmentation
    with pytest.raises(octswap.InputError, match="--distill logits needs a classification model; this one is a "
                                                 "segmentation model"):
        heal(converted, teacher, data, options=HealOptions(distill="logits", epochs=1))


# ------------------------------------------------------------------ features
@pytest.fixture(scope="module")
def features():
    torch.manual_seed(0)
    teacher = pyramid_detector()
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    # Untrained but consistent: BatchNorm statistics of these inputs, as a trained model has its data's.
    for bn in (m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.reset_running_stats()
        bn.momentum = None
    with torch.no_grad():
        teacher.train()(x)
    teacher.eval()
    converted, plan = octswap.convert(teacher, alpha=0.5, input_shape=(3, 32, 32))
    return teacher, converted, plan, Data.from_tensors(x, name="noise")


def test_tapped_returns_the_watched_outputs_and_skips_the_rest(features):
    teacher, *_ = features
    calls = []
    handle = teacher.head.register_forward_hook(lambda *_: calls.append(1))
    tapped = Tapped(teacher, ["encoder"])
    x = torch.randn(2, 3, 32, 32)
    first, second = tapped(x), tapped(x)
    assert [f.shape for f in first["encoder"]] == [(2, 32, 16, 16), (2, 32, 8, 8)]
    assert torch.equal(first["encoder"][1], teacher.encoder(x)[1])
    assert len(calls) == 1  # the first call learns the order; the second stops after the encoder
    assert torch.equal(second["encoder"][0], first["encoder"][0])
    handle.remove()
    assert len(teacher(x)) == 2  # no hook left behind: the model is a plain model again
    with pytest.raises(octswap.InputError, match="'neck' is not a submodule"):
        Tapped(teacher, ["neck"])


def test_tapped_says_why_a_module_of_a_traced_graph_did_not_run():
    net = torch.nn.Sequential(
        torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()), torch.nn.Conv2d(8, 4, 1),
    ).eval()
    traced = torch.fx.symbolic_trace(net)  # calls the leaves: "0" is a container it never calls
    with pytest.raises(octswap.InputError, match=r"0 did not run .*traced there, .*--mode layer"):
        Tapped(traced, ["0"])(torch.randn(1, 3, 8, 8))
    assert set(Tapped(traced, ["0.0"])(torch.randn(1, 3, 8, 8))) == {"0.0"}
    unused = torch.nn.Module()
    unused.conv, unused.spare = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(3, 4, 1)
    unused.forward = lambda x: unused.conv(x)
    with pytest.raises(octswap.InputError, match=r"spare did not run in the model's forward$"):
        Tapped(unused, ["spare"])(torch.randn(1, 3, 8, 8))


def test_feature_distillation_raises_similarity(features):
    teacher, converted, plan, data = features
    names = default_features(plan)
    assert names == tuple(r["path"] for r in plan.regions) and names
    loader = make_loader(data, batch_size=32)
    start = octswap.measure_fidelity(teacher, converted, loader, stages=())
    options = HealOptions(epochs=3, batch_size=16, lr=1e-3, features=names, calibrate_bn=2)
    result = heal(converted, teacher, data, options=options)
    end = octswap.measure_fidelity(teacher, result.model, loader, stages=())
    assert start.task == "features" and end.agreement > start.agreement  # mean cosine similarity
    assert end.relative_error < start.relative_error
    assert all(p.requires_grad for p in result.model.parameters())  # frozen only while training


def test_feature_distillation_resumes_exactly(features):
    teacher, converted, plan, data = features
    options = HealOptions(epochs=2, batch_size=16, features=default_features(plan), calibrate_bn=2)  # 4 steps/epoch
    assert_resumes_exactly(converted, teacher, data, options, stop_at=4, where="epoch 2 after step 1 of 4")


# ------------------------------------------------------------------ command line
def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_heals_a_segmentation_model_on_masks(segmentation, tmp_path):
    teacher, _, _, _, folder = segmentation
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    # Regions mode (its forward branches on the size): --features names modules the converted model calls.
    converted = run("convert", "tests.nets:branching_segmenter", "-m", "classes=4", "-w", tmp_path / "teacher.pt",
                    "-s", "32", "-a", "0.5", "-o", tmp_path / "oct.pt")  # fmt: skip
    assert converted.exit_code == 0, converted.output
    result = run("heal", tmp_path / "oct.pt", "--data", folder, "--val", folder, "--epochs", "1", "--batch-size", "16",
                 "--labels", "--allow-import", "-f", "json", "--workers", "0")  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)["healing"]
    assert record["options"]["task"] == "segmentation" and record["options"]["labels"] is True
    assert "1 epoch of 48 samples at batch size 16: only 3 updates" in result.stderr  # 48 scenes
    assert "(batch size 1 gives 48)" in result.stderr
    healed = record["fidelity"]["healed"]
    assert healed["task"] == "segmentation" and 0 <= healed["miou_converted"] <= 1 and healed["samples"] == 48
    for args, message in [(["--distill", "logits"], "--distill logits needs a classification model"),
                          (["--distill", "features", "--features", "nosuch"], "'nosuch' is not a submodule")]:
        bad = run("heal", tmp_path / "oct.pt", "--data", folder, *args, "--allow-import", "-o", tmp_path / "bad.pt")
        assert bad.exit_code == 2 and message in bad.stderr, bad.output
        assert not (tmp_path / "bad.pt").exists()
    mixed = run("heal", tmp_path / "oct.pt", "--data", folder, "--distill", "pixels", "--features", "encoder",
                "--allow-import", "-o", tmp_path / "bad.pt")  # fmt: skip
    assert mixed.exit_code == 2 and "does not go with --distill pixels" in mixed.stderr, mixed.output
    # --features alone means feature distillation, recorded as such; CSV holds numbers; an early stop is announced.
    features = run("heal", tmp_path / "oct.pt", "--data", folder, "--val", folder, "--features", "encoder",
                   "--epochs", "3", "--target", "0.01", "--batch-size", "16", "--allow-import", "-f", "csv",
                   "--workers", "0", "-o", tmp_path / "f.pt")  # fmt: skip
    assert features.exit_code == 0, features.output
    healing = octswap.read_checkpoint(tmp_path / "f.pt").healing
    assert healing["options"]["distill"] == "features" and healing["options"]["features"] == ["encoder"]
    assert healing["stopped_early"] and healing["epochs_done"] == 1
    assert "stopped early" in features.stderr and "--target 1.00%" in features.stderr
    rows = list(csv.DictReader(io.StringIO(features.stdout)))
    assert [r["model"] for r in rows] == ["converted", "calibrated", "healed"]
    for row in rows:
        assert 0.0 <= float(row["agreement"]) <= 1.0 and 0.0 <= float(row["miou_converted"]) <= 1.0
    # Class labels are for classifiers: a .pt file with labels is refused for a segmentation model.
    torch.save({"inputs": torch.randn(4, 3, 32, 32), "labels": torch.zeros(4, dtype=torch.long)}, tmp_path / "c.pt")
    bad = run("heal", tmp_path / "oct.pt", "--data", tmp_path / "c.pt", "--allow-import", "-o", tmp_path / "bad.pt")
    assert bad.exit_code == 2 and "holds class labels" in bad.stderr and not (tmp_path / "bad.pt").exists()


def test_segmentation_heal_with_masks_under_ddp_matches_one_process(segmentation, tmp_path):
    # Rank 0 alone measures mIoU (torchmetrics): a metric syncing at compute() waited for the
    # other rank, which was already in DDP's setup -- a deadlock, caught here by the timeout.
    teacher, _, _, _, folder = segmentation
    _convert_trained(teacher, "tests.nets:branching_segmenter", tmp_path, "classes=4")
    common = ["heal", tmp_path / "oct.pt", "--data", folder, "--val", folder, "--epochs", "1", "--calibrate-bn", "0",
              "--bn", "frozen", "--workers", "0", "--allow-import", "--format", "json", "--force"]  # fmt: skip
    first, second = heal_one_and_two_processes(common, tmp_path / "one.pt", tmp_path / "two.pt", timeout=300)
    assert second["world_size"] == 2 and first["world_size"] == 1
    assert second["history"][0]["loss"] == pytest.approx(first["history"][0]["loss"], rel=1e-4)
    one, two = first["fidelity"]["healed"], second["fidelity"]["healed"]
    assert one["task"] == two["task"] == "segmentation" and one["samples"] == two["samples"] == 48
    assert two["miou_converted"] == pytest.approx(one["miou_converted"], abs=1e-3)


def test_feature_distillation_under_ddp_matches_one_process(features, tmp_path):
    teacher, _, _, data = features
    torch.save({"inputs": data.dataset.inputs[:32]}, tmp_path / "noise.pt")
    _convert_trained(teacher, "tests.nets:pyramid_detector", tmp_path)
    common = ["heal", tmp_path / "oct.pt", "--data", tmp_path / "noise.pt", "--epochs", "1", "--calibrate-bn", "0",
              "--bn", "frozen", "--allow-import", "--format", "json", "--force"]  # fmt: skip
    first, second = heal_one_and_two_processes(common, tmp_path / "one.pt", tmp_path / "two.pt")
    assert first["options"]["features"] == second["options"]["features"] and first["options"]["features"]
    assert second["world_size"] == 2
    assert second["history"][0]["loss"] == pytest.approx(first["history"][0]["loss"], rel=1e-4)
    a = octswap.read_checkpoint(tmp_path / "one.pt").state_dict
    b = octswap.read_checkpoint(tmp_path / "two.pt").state_dict
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-4), key


def test_cli_heals_a_torchvision_detector_by_its_features(tmp_path, monkeypatch):
    monkeypatch.setattr("octswap.fidelity.detection._WARNED_EMPTY", set())
    folder = write_scenes(tmp_path / "scenes", 8, seed=3)
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=4, min_size=64, max_size=64)
    torch.save(model.state_dict(), tmp_path / "det.pt")
    args = ["-m", "num_classes=4", "-m", "weights_backbone=None", "-m", "min_size=64", "-m", "max_size=64"]
    converted = run("convert", "fasterrcnn_mobilenet_v3_large_320_fpn", *args, "-w", tmp_path / "det.pt", "-s", "64",
                    "-a", "0.5", "-o", tmp_path / "oct.pt")  # fmt: skip
    assert converted.exit_code == 0, converted.output
    result = run("heal", tmp_path / "oct.pt", "--data", folder / "images", "--annotations", folder / "instances.json",
                 "--val", folder / "images", "--val-annotations", folder / "instances.json", "--target", "0.01",
                 "--epochs", "2", "--batch-size", "4", "--calibrate-bn", "1", "-f", "json", "--workers", "0")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)["healing"]
    # Untrained, the detector scores every class about 1/4: no detection reaches 0.5, so F1 is 1 with
    # nothing detected. That is no agreement to stop at: both epochs run, and the figures say why.
    assert record["fidelity"]["healed"]["detections_original"] == 0 and len(record["history"]) == 2
    assert result.stderr.count("the original made no detection") == 1  # said once, not at every evaluation
    assert record["options"]["task"] == "detection" and record["options"]["distill"] == "features"
    assert record["options"]["features"] == ["backbone", "rpn.head"]
    assert record["fidelity"]["healed"]["task"] == "detection" and record["fidelity"]["healed"]["map50_original"] is not None
    # What feature distillation moves is in the table too: the stages' drift, before and after.
    view = healing_view(record)
    assert view.headers[-1].startswith("stage drift")
    stages = record["fidelity"]["healed"]["stages"]
    assert stages and view.rows[-1][-1] == f"{sum(s['relative_error'] for s in stages) / len(stages):.4f}"
    # Its own losses on the boxes, in train mode, beside the features: every parameter trains.
    labels = run("heal", tmp_path / "oct.pt", "--data", folder / "images", "--annotations", folder / "instances.json",
                 "--labels", "--epochs", "1", "--batch-size", "4", "--calibrate-bn", "0", "-f", "json",
                 "--workers", "0", "-o", tmp_path / "labels.pt")  # fmt: skip
    assert labels.exit_code == 0, labels.output
    record = json.loads(labels.stdout)["healing"]
    assert record["options"]["labels"] is True and math.isfinite(record["history"][0]["loss"])
    before = octswap.read_checkpoint(tmp_path / "oct.pt").state_dict
    after = octswap.read_checkpoint(tmp_path / "labels.pt").state_dict
    box_head = [k for k in before if k.startswith("roi_heads.box_predictor")]
    assert box_head and all(not torch.equal(before[k], after[k]) for k in box_head)  # outside the tapped modules
    # Without boxes there is no loss of its own: one line, nothing before it (no pycocotools chatter,
    # no line left by a progress bar never shown).
    bare = run("heal", tmp_path / "oct.pt", "--data", folder / "images", "--labels", "-o", tmp_path / "x.pt")
    assert bare.exit_code == 2 and "needs labelled data" in bare.stderr and "--annotations" in bare.stderr
    assert len(bare.stderr.splitlines()) == 1 and bare.stderr.startswith("octswap: error:")


def test_ctrl_c_on_a_segmentation_heal_saves_and_resume_finishes(segmentation, tmp_path):
    from tests.processes import interrupt_when

    teacher, _, _, _, folder = segmentation
    _convert_trained(teacher, "tests.nets:size_checked_segmenter", tmp_path, "classes=4")
    out = tmp_path / "healed.pt"
    args = ["heal", tmp_path / "oct.pt", "--data", folder, "--limit", "24", "--epochs", "4", "--batch-size", "2",
            "--workers", "0", "--allow-import", "-o", out, "-f", "json"]  # fmt: skip
    code, stderr = interrupt_when(args, out)
    assert code == 130 and "progress saved to" in stderr and "Traceback" not in stderr, stderr
    assert 1 <= octswap.read_checkpoint(out).training["epoch"] < 4
    resumed = subprocess.run(octswap_cmd(*args, "--resume"), cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads(resumed.stdout)["healing"]
    assert record["complete"] and record["epochs_done"] == 4 and record["fidelity"]["healed"]["task"] == "segmentation"


@pytest.mark.parametrize(("converted", "calibrated", "measured_on", "warned"), [
    (0.90, 0.80, "--val", "than the input checkpoint (85.00% < 90.00% on --val)"),
    (0.70, 0.90, "--val", "than BatchNorm re-estimation alone (85.00% < 90.00% on --val)"),
    (0.70, None, "--val", None),
    (0.90, None, "the training data", "(85.00% < 90.00% on the training data)"),
])
def test_a_heal_that_ends_below_where_it_started_is_warned_about(tmp_path, capsys, converted, calibrated, measured_on,
                                                                 warned):  # fmt: skip
    def fidelity(agreement):
        return None if agreement is None else {"task": "features", "samples": 4, "agreement": agreement, "kl": None,
                                                "relative_error": 0.1}

    path = tmp_path / "healed.pt"
    path.write_bytes(b"x")
    healing = {"epochs_done": 1, "options": {"epochs": 1}, "history": [],
               "fidelity": {"converted": fidelity(converted), "calibrated": fidelity(calibrated),
                            "healed": fidelity(0.85)}}
    _report_written(HealOutcome(path, healing), path, measured_on=measured_on)
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert (lines == []) if warned is None else (len(lines) == 1 and warned in lines[0])
