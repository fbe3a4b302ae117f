"""Golden outputs: a fixed set of commands prints the same bytes as when they were recorded.

Recorded before the CLI, healing, octave and zoo code was reorganised (issue 20), so that
moving code cannot change what users see. Times, wall-clock figures and temporary paths are
masked; everything else (numbers of FLOPs, tables, JSON keys and their order) must match.

To re-record after an intended change of output: ``OCTSWAP_UPDATE_GOLDEN=1 pytest tests/test_golden.py``
and review the diff of ``tests/golden/``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from octswap.cli import app
from tests.nets import bars, trained_tiny

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("OCTSWAP_UPDATE_GOLDEN") == "1"
FORMATS = ("table", "json", "markdown", "csv")
# Two small models: a hand-built residual net, and torchvision's MobileNetV2 (depthwise, inverted residuals).
MODELS = {
    "tiny": ["tests.nets:tiny_resnet", "-s", "16", "-a", "0.5"],
    "mobilenet": ["mobilenet_v2", "-s", "32", "-a", "0.25", "-m", "num_classes=10"],
}
TIMES = [
    (re.compile(r'("(?:[a-z_]*seconds|[a-z_]*_s|samples_per_s)": )-?[0-9.e+-]+'), r"\1<t>"),
    (re.compile(r"\b[0-9.]+ (s|ms|samples/s)\b"), r"<t> \1"),
    (re.compile(r"(wall time:? ?)[0-9.]+ ?s"), r"\1<t>"),
    (re.compile(r"\b\d+(\.\d+)? MiB\b"), "<size> MiB"),
]


@pytest.fixture(autouse=True)
def _two_threads():
    """The goldens were recorded with torch on 2 threads, and float sums depend on the split of the
    work: keep 2 here also under pytest-xdist, whose workers otherwise compute on 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def zoo_times(text: str) -> str:
    """The zoo summary's per-task "time (s)" column (the 10th) masked."""
    lines = []
    for line in text.splitlines(keepends=True):
        cells = line.split(" | ")
        if line.startswith("| tests.") and len(cells) == 11:
            cells[9] = "<t>"
        lines.append(" | ".join(cells))
    return "".join(lines)


def normalise(text: str, tmp: Path) -> str:
    text = zoo_times(text)
    for root in {str(tmp), str(tmp.resolve())}:
        text = text.replace(root, "<tmp>")
    for pattern, repl in TIMES:
        text = pattern.sub(repl, text)
    return text


#: Figures of a model trained in the test (losses, errors, similarities): their last digits depend
#: on the CPU's kernels (summation order), not on octswap, so a trained golden keeps their place only.
#: (Three significant digits or more: the options' 0.001 and 0.0001 are kept.)
TRAINED = re.compile(r"(?<![\w.])-?(?:0\.0*[1-9]\d{2,}|[1-9]\d*\.\d{3,})(?:e-?\d+)?")


def check(name: str, result, tmp: Path, *, trained: bool = False) -> None:
    assert result.exit_code == 0, result.output
    got = f"# exit {result.exit_code}\n# stdout\n{result.stdout}# stderr\n{result.stderr}"
    got = normalise(got, tmp)
    if trained:
        got = TRAINED.sub("<x>", got)
    path = GOLDEN / f"{name}.txt"
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(got)
    assert path.is_file(), f"no golden output {path.name}: record with OCTSWAP_UPDATE_GOLDEN=1"
    assert got == path.read_text(), f"{name}: output differs from {path}"


@pytest.fixture
def invoke(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def call(*args):
        torch.manual_seed(0)
        return runner.invoke(app, [str(a) for a in args])

    return call


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("command", ["convert", "report", "plan"])
def test_command_output_is_unchanged(invoke, tmp_path, command, model, fmt):
    args = [command, *MODELS[model], "-f", fmt]
    if command == "convert":
        args += ["-o", "m.pt"]
    check(f"{command}-{model}-{fmt}", invoke(*args), tmp_path)


def test_zoo_outputs_are_unchanged(invoke, tmp_path):
    result = invoke("zoo", "--models", "tests.nets:tiny_resnet,tests.nets:gated", "--alpha", "0.25,0.5",
                    "-s", "16", "--out", "zoo")  # fmt: skip
    check("zoo-stdout", result, tmp_path)
    summary = normalise((tmp_path / "zoo" / "summary.md").read_text(), tmp_path)
    data = json.loads((tmp_path / "zoo" / "results.json").read_text())
    data["wall_time_s"] = None
    for row in data["results"]:
        for key in [k for k in row if k.endswith("_s") or "seconds" in k or k in ("octswap_version", "torch_version")]:
            row[key] = None
    files = {"summary.md": summary, "results.json": json.dumps(data, indent=1, sort_keys=False)}
    for name, text in files.items():
        path = GOLDEN / f"zoo-{name}.txt"
        if UPDATE:
            path.write_text(text)
        assert text == path.read_text(), f"zoo {name} differs from {path}"


def test_heal_json_summary_is_unchanged(invoke, tmp_path):
    torch.manual_seed(0)
    x, y = bars(48, seed=5)
    teacher = trained_tiny(x, y, steps=40)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    torch.save({"inputs": x, "labels": y}, tmp_path / "bars.pt")
    converted = invoke("convert", "tests.nets:tiny_resnet", "-m", "num_classes=3", "--weights", "teacher.pt",
                       "-s", "16", "-a", "0.5", "-o", "m.pt", "-f", "json")  # fmt: skip
    assert converted.exit_code == 0, converted.output
    result = invoke("heal", "m.pt", "--data", "bars.pt", "--val", "bars.pt", "--epochs", "2", "--batch-size", "16",
                    "--calibrate-bn", "2", "--allow-import", "-o", "healed.pt", "-f", "json")  # fmt: skip
    check("heal-json", result, tmp_path, trained=True)
