"""`--data` on convert/report and `octswap heal` on the command line: JSON, exit codes, nothing written."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import octswap
from octswap.cli import app
from tests.nets import bars, trained_tiny

TINY = "tests.nets:tiny_resnet"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-data")
    x, y = bars(48, seed=5)
    teacher = trained_tiny(x, y, steps=40)
    torch.save(teacher.state_dict(), folder / "teacher.pt")
    torch.save({"inputs": x, "labels": y}, folder / "bars.pt")
    torch.save({"inputs": x}, folder / "unlabelled.pt")
    return folder, teacher, x, y


@pytest.fixture
def runner():
    return CliRunner()


def run(runner, *args):
    return runner.invoke(app, [str(a) for a in args])


def convert_args(folder, out, *extra):
    return ["convert", TINY, "-m", "num_classes=3", "--weights", folder / "teacher.pt", "-s", "16", "-a", "0.5",
            "-o", out, *extra]  # fmt: skip


def test_convert_with_data_measures_fidelity_and_reestimates_batchnorm(runner, setup, tmp_path):
    folder, teacher, x, y = setup
    out = tmp_path / "m.pt"
    result = run(runner, *convert_args(folder, out, "--data", folder / "bars.pt", "--calibrate-bn", "2",
                                       "--batch-size", "16", "-f", "json"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "re-estimated BatchNorm statistics on 2 batches" in result.stderr
    fid = json.loads(result.stdout)["fidelity"]
    # Independently: the saved model against the teacher, sample by sample.
    model = octswap.load(out, allow_import=True)
    with torch.no_grad():
        o, c = teacher(x), model(x)
    assert fid["samples"] == 48
    assert fid["agreement"] == pytest.approx(float((o.argmax(1) == c.argmax(1)).float().mean()), abs=1e-6)
    assert fid["accuracy_original"] == pytest.approx(float((o.argmax(1) == y).float().mean()), abs=1e-6)
    assert fid["accuracy_converted"] == pytest.approx(float((c.argmax(1) == y).float().mean()), abs=1e-6)
    assert fid["top5_original"] is None  # 3 classes
    assert [s["name"] for s in fid["stages"]] == ["stem", "layer1", "layer2", "head"]
    assert octswap.read_checkpoint(out).report["fidelity"]["agreement"] == fid["agreement"]

    report = run(runner, "report", out, "--data", folder / "bars.pt", "--allow-import", "-f", "json")
    assert report.exit_code == 0, report.output
    again = json.loads(report.stdout)["fidelity"]
    assert again["agreement"] == fid["agreement"] and again["kl"] == pytest.approx(fid["kl"], rel=1e-5)


def test_report_without_data_says_so_and_csv_carries_fidelity_rows(runner, setup, tmp_path):
    folder, *_ = setup
    plain = run(runner, "report", TINY, "-s", "16", "-f", "json")
    assert plain.exit_code == 0 and json.loads(plain.stdout)["fidelity"] is None
    table = run(runner, "report", TINY, "-s", "16", "--no-layers")
    assert "Fidelity not measured: pass --data" in table.stdout
    csv = run(runner, "report", TINY, "-m", "num_classes=3", "--weights", folder / "teacher.pt", "-s", "16",
              "--data", folder / "unlabelled.pt", "-f", "csv")  # fmt: skip
    assert csv.exit_code == 0, csv.output
    header, *rows = csv.stdout.strip().splitlines()
    assert header.endswith(",note,value")
    metrics = {r.split(",")[1]: r.split(",")[-1] for r in rows if r.startswith("fidelity,")}
    assert metrics["samples"] == "48" and metrics["accuracy_original"] == "" and "drift:layer1" in metrics


def test_heal_writes_a_checkpoint_with_its_record(runner, setup, tmp_path):
    folder, *_ = setup
    ckpt, healed = tmp_path / "m.pt", tmp_path / "healed.pt"
    assert run(runner, *convert_args(folder, ckpt)).exit_code == 0
    result = run(runner, "heal", ckpt, "--data", folder / "bars.pt", "--val", folder / "bars.pt", "--epochs", "2",
                 "--batch-size", "16", "--allow-import", "-o", healed, "-f", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)["healing"]
    assert record["method"] == "distillation" and record["complete"] and record["epochs_done"] == 2
    assert record["options"]["temperature"] == 4.0 and record["options"]["labels"] is False
    fid = record["fidelity"]
    assert fid["healed"]["kl"] < fid["converted"]["kl"] and fid["calibrated"] is not None
    assert [e["epoch"] for e in record["history"]] == [1, 2] and record["history"][1]["fidelity"]["samples"] == 48
    saved = octswap.read_checkpoint(healed)
    assert saved.training is None and saved.healing["epochs_done"] == 2
    assert run(runner, "report", healed, "--allow-import", "-f", "json").exit_code == 0
    assert run(runner, "bench", healed, "--allow-import", "--batch", "1", "--rounds", "1").exit_code == 0
    table = run(runner, "heal", ckpt, "--data", folder / "bars.pt", "--epochs", "1", "--allow-import", "-o", healed)
    assert table.exit_code == 2 and "exists; pass --force" in table.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["convert", TINY, "-s", "16", "--calibrate-bn", "2"], "--calibrate-bn needs --data"),
        (["report", TINY, "-s", "16", "--data", "{folder}/missing"], "data not found"),
        (["report", TINY, "-s", "16", "--data", "{folder}/bars.pt", "--mean", "a,b"], "--mean: expected a number"),
        (["report", TINY, "-s", "16", "--data", "{folder}/bars.pt", "--crop", "3x"], "--crop: expected N or HxW"),
        (["heal", "{ckpt}", "--data", "{folder}/nothing.pt", "--allow-import"], "data not found"),
        (["heal", "{ckpt}", "--data", "{folder}/unlabelled.pt", "--labels", "--allow-import"], "needs labelled data"),
        (["heal", "{ckpt}", "--data", "{folder}/bars.pt"], "--allow-import"),
        (["heal", "{ckpt}", "--data", "{folder}/bars.pt", "--allow-import", "-o", "typo.pt", "--resume"],
         "--resume: typo.pt does not exist"),
        (["heal", "{random}", "--data", "{folder}/bars.pt", "--allow-import"], "converted from random weights"),
        (["heal", "{fast}", "--data", "{folder}/bars.pt", "--allow-import"], "saved for inference"),
        (["heal", "{ckpt}", "--data", "{folder}/bars.pt", "--allow-import", "--target", "2"], "Invalid value for '--target'"),
        (["heal", "{folder}/missing.pt", "--data", "{folder}/bars.pt"], "checkpoint not found"),
    ],
)
def test_bad_input(runner, setup, tmp_path, monkeypatch, args, message):
    folder, *_ = setup
    monkeypatch.chdir(tmp_path)
    names = {"ckpt": tmp_path / "m.pt", "random": tmp_path / "r.pt", "fast": tmp_path / "f.pt", "folder": folder}
    assert run(runner, *convert_args(folder, names["ckpt"])).exit_code == 0
    assert run(runner, "convert", TINY, "-m", "num_classes=3", "-s", "16", "-o", names["random"]).exit_code == 0
    assert run(runner, *convert_args(folder, names["fast"], "--optimize-for-inference")).exit_code == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run(runner, *[a.format(**names) for a in map(str, args)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before
