"""Healing by distillation: it helps, resumes exactly, and runs the same under DDP (gloo)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import octswap
from octswap.data import Data
from octswap.distillation import HealInterrupted, HealOptions, distillation_loss, heal
from tests.nets import bars, trained_tiny
from tests.processes import heal_one_and_two_processes, interrupt_when, octswap_cmd

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def task():
    x, y = bars(96, seed=3)
    teacher = trained_tiny(x, y, steps=80)
    converted, plan = octswap.convert(teacher, alpha=0.5, input_shape=(3, 16, 16))
    return teacher, converted, plan, Data.from_tensors(x, y, name="bars")


def test_distillation_loss_matches_hinton():
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    T = 3.0
    p, log_q = (t / T).softmax(1), (s / T).log_softmax(1)
    want = (p * (p.log() - log_q)).sum(1).mean() * T * T
    assert distillation_loss(s, t, T) == pytest.approx(float(want), rel=1e-5)
    assert float(distillation_loss(t, t, T)) == pytest.approx(0.0, abs=1e-6)


def test_heal_brings_the_student_closer_and_leaves_inputs_alone(task):
    teacher, converted, _, data = task
    before = {k: v.clone() for k, v in converted.state_dict().items()}
    loader = octswap.data.make_loader(data, batch_size=32)
    start = octswap.measure_fidelity(teacher, converted, loader, stages=())
    result = heal(converted, teacher, data, options=HealOptions(epochs=3, batch_size=16, lr=3e-3), val=data)
    end = octswap.measure_fidelity(teacher, result.model, loader, stages=())
    assert end.kl < start.kl * 0.5
    assert end.agreement >= start.agreement
    assert [e.epoch for e in result.history] == [1, 2, 3] and result.history[-1].fidelity.agreement == end.agreement
    assert result.calibrated_batches == 6 and not result.model.training
    assert all(torch.equal(before[k], v) for k, v in converted.state_dict().items())  # a copy was trained


def test_resume_after_an_interrupted_epoch_gives_the_same_state(task):
    teacher, converted, _, data = task
    options = HealOptions(epochs=2, batch_size=16, calibrate_bn=2)  # 6 steps an epoch
    whole = heal(converted, teacher, data, options=options).model.state_dict()

    saved = {}

    def keep(model, state):
        saved["weights"] = copy.deepcopy(model.state_dict())
        saved["state"] = copy.deepcopy(state)

    steps = iter(range(100))
    with pytest.raises(HealInterrupted, match="epoch 2 after step 2 of 6"):
        heal(converted, teacher, data, options=options, save=keep, stop=lambda: next(steps) == 7)
    assert saved["state"]["epoch"] == 1 and saved["state"]["step_in_epoch"] == 2
    student = copy.deepcopy(converted)
    student.load_state_dict(saved["weights"])
    resumed = heal(student, teacher, data, options=options, resume=saved["state"])
    assert [e.epoch for e in resumed.history] == [1, 2]
    for key, value in resumed.model.state_dict().items():
        assert torch.allclose(value.float(), whole[key].float(), atol=1e-6), key


def test_target_stops_early(task):
    teacher, converted, _, data = task
    result = heal(converted, teacher, data, options=HealOptions(epochs=5, batch_size=32, target=0.01), val=data)
    assert result.stopped_early and len(result.history) == 1


def test_bad_options(task):
    teacher, converted, _, data = task
    with pytest.raises(octswap.InputError, match="^epochs must be at least 1, got 0$"):
        HealOptions(epochs=0)
    with pytest.raises(octswap.InputError, match="^bn must be 'train' or 'frozen', got 'sync'$"):
        HealOptions(bn="sync")
    with pytest.raises(octswap.InputError, match="^target needs val data"):
        heal(converted, teacher, data, options=HealOptions(target=0.9))
    unlabelled = Data.from_tensors(torch.randn(4, 3, 16, 16))
    with pytest.raises(octswap.InputError, match="^learning from labels .* needs labelled data but .* has none"):
        heal(converted, teacher, unlabelled, options=HealOptions(labels=True))


# ------------------------------------------------------------------ command line, torchrun
@pytest.fixture(scope="module")
def files(task, tmp_path_factory):
    """A teacher weights file, its converted checkpoint and a .pt data set."""
    teacher, _, _, data = task
    folder = tmp_path_factory.mktemp("heal")
    torch.save(teacher.state_dict(), folder / "teacher.pt")
    x = torch.stack([data.dataset[i][0] for i in range(len(data))])
    y = torch.tensor([data.dataset[i][1] for i in range(len(data))])
    torch.save({"inputs": x, "labels": y}, folder / "bars.pt")
    subprocess.run(
        [sys.executable, "-m", "octswap.cli", "convert", "tests.nets:tiny_resnet", "-m", "num_classes=3",
         "--weights", str(folder / "teacher.pt"), "--input-size", "16", "--alpha", "0.5", "-o", str(folder / "oct.pt")],
        check=True, cwd=ROOT, capture_output=True,
    )  # fmt: skip
    return folder


@pytest.mark.parametrize("data_name", ["bars.pt", "missing.pt"])
def test_resume_without_a_run_to_continue_is_refused_before_any_work(files, tmp_path, data_name):
    """A mistyped output path with resume=True must not start a new run (it used to, with a warning)."""
    out = tmp_path / "h.pt"
    message = rf"^resume=True but {re.escape(str(out))} does not exist"
    with pytest.raises(octswap.InputError, match=message):  # missing.pt: refused before the data is opened
        octswap.heal_checkpoint(files / "oct.pt", files / data_name, out, resume=True, allow_import=True,
                                options=HealOptions(epochs=1, calibrate_bn=0))  # fmt: skip
    with pytest.raises(octswap.InputError, match=message):  # force does not turn it into a new run
        octswap.heal_checkpoint(files / "oct.pt", files / data_name, out, resume=True, force=True, allow_import=True)
    assert list(tmp_path.iterdir()) == []


def test_resume_keeps_what_an_existing_output_holds(files, tmp_path):
    """A finished run is returned as it is; a checkpoint that is not a healing run is refused."""
    ckpt = octswap.read_checkpoint(files / "oct.pt")
    finished, plain = tmp_path / "finished.pt", tmp_path / "plain.pt"
    record = {"method": "distillation", "complete": True, "epochs_done": 1}
    octswap.save(finished, octswap.load(files / "oct.pt", allow_import=True), ckpt.plan, source=ckpt.source,
                 healing=record)  # fmt: skip
    shutil.copy(files / "oct.pt", plain)
    before = {p.name: p.read_bytes() for p in (finished, plain)}
    outcome = octswap.heal_checkpoint(files / "oct.pt", files / "bars.pt", finished, resume=True, allow_import=True)
    assert outcome.already_complete and outcome.result is None and outcome.healing == record
    with pytest.raises(octswap.InputError, match=r"^resume=True but .*plain\.pt is not a healing run"):
        octswap.heal_checkpoint(files / "oct.pt", files / "bars.pt", plain, resume=True, allow_import=True)
    with pytest.raises(octswap.OutputExistsError, match=r"plain\.pt exists; pass force=True .* or resume=True"):
        octswap.heal_checkpoint(files / "oct.pt", files / "bars.pt", plain, allow_import=True)
    assert {p.name: p.read_bytes() for p in (finished, plain)} == before


def test_ddp_two_gloo_processes_match_one_process(files):
    common = ["heal", files / "oct.pt", "--data", files / "bars.pt", "--epochs", "1", "--calibrate-bn", "0",
              "--bn", "frozen", "--allow-import", "--format", "json", "--force"]  # fmt: skip
    first, second = heal_one_and_two_processes(common, files / "one.pt", files / "two.pt")
    assert second["world_size"] == 2 and first["world_size"] == 1
    assert second["history"][0]["loss"] == pytest.approx(first["history"][0]["loss"], rel=1e-4)
    assert second["history"][0]["samples"] == first["history"][0]["samples"] == 96
    a = octswap.read_checkpoint(files / "one.pt").state_dict
    b = octswap.read_checkpoint(files / "two.pt").state_dict
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-4), key


def test_ctrl_c_saves_and_resume_finishes(files):
    out = files / "ctrlc.pt"
    heal_args = ["heal", files / "oct.pt", "--data", files / "bars.pt", "--epochs", "6", "--batch-size", "4",
                 "--allow-import", "-o", out, "--format", "json"]  # fmt: skip
    code, stderr = interrupt_when(heal_args, out)
    assert code == 130, stderr
    assert "progress saved to" in stderr and "--resume" in stderr and "Traceback" not in stderr
    saved = octswap.read_checkpoint(out)
    assert saved.training is not None and saved.healing["complete"] is False
    done_epochs = saved.training["epoch"]
    assert 1 <= done_epochs < 6
    resumed = subprocess.run(octswap_cmd(*heal_args, "--resume"), cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads(resumed.stdout)["healing"]
    assert record["complete"] is True and record["epochs_done"] == 6 and len(record["history"]) == 6
    final = octswap.read_checkpoint(out)
    assert final.training is None and final.healing["fidelity"]["healed"]["samples"] == 96
    model = octswap.load(out, allow_import=True)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    again = subprocess.run(octswap_cmd(*heal_args, "--resume"), cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0 and "already holds a finished healing run" in again.stderr
