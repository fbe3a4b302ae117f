"""The command line: exit codes, one-line errors on stderr, JSON on stdout, nothing left behind."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import octswap
from octswap.cli import app
from tests.nets import TinyResNet

TINY = "tests.nets:tiny_resnet"


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(runner, *args):
    return runner.invoke(app, [str(a) for a in args])


def files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_version(runner):
    result = run(runner, "--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"octswap {octswap.__version__}"


def test_convert_writes_checkpoint_and_json_report(runner, workdir):
    result = run(runner, "convert", TINY, "--alpha", "0.5", "--input-size", "16", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    summary = data["summary"]
    assert summary["convs_converted"] == 6 and summary["convs_kept"] == 1
    assert summary["flops_after"] < summary["flops_before"]
    assert summary["params_after"] == summary["params_before"]
    assert data["checkpoint"] == "tiny_resnet-oct0.5.pt"
    assert files(workdir) == ["tiny_resnet-oct0.5.pt"]
    assert "wrote tiny_resnet-oct0.5.pt" in result.stderr
    model = octswap.load(workdir / "tiny_resnet-oct0.5.pt", allow_import=True)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 10)


def test_convert_resnet18_default_output_and_table(runner, workdir):
    result = run(runner, "convert", "resnet18", "--alpha", "0.25", "--no-layers")
    assert result.exit_code == 0, result.output
    assert "octswap report: resnet18" in result.stdout and "conv+linear" in result.stdout
    assert files(workdir) == ["resnet18-oct0.25.pt"]
    ckpt = octswap.read_checkpoint(workdir / "resnet18-oct0.25.pt")
    assert ckpt.source.name == "resnet18" and ckpt.plan.policy.alpha == 0.25
    assert ckpt.report["flops_after"] < ckpt.report["flops_before"]


@pytest.mark.parametrize("fmt", ["markdown", "csv"])
def test_report_formats(runner, fmt):
    result = run(runner, "report", TINY, "--input-size", "16", "--format", fmt)
    assert result.exit_code == 0, result.output
    if fmt == "csv":
        header, *rows = result.stdout.strip().splitlines()
        assert header.startswith("kind,name,flops_before,flops_after")
        assert rows[-1].startswith("total,total,")
    else:
        assert result.stdout.startswith("## octswap report:")
        assert "| total | total |" in result.stdout


def test_report_of_a_checkpoint(runner, workdir):
    assert run(runner, "convert", TINY, "-s", "16", "-a", "0.5", "-o", "m.pt").exit_code == 0
    result = run(runner, "report", "m.pt", "--allow-import", "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    assert summary["convs_converted"] == 6 and summary["flops_after"] < summary["flops_before"]
    refused = run(runner, "report", "m.pt")
    assert refused.exit_code == 2 and "--allow-import" in refused.stderr


def test_plan_json(runner):
    result = run(runner, "plan", TINY, "-s", "16", "-a", "0.5", "-f", "json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["model"] == TINY
    actions = {layer["name"]: layer["action"] for layer in plan["layers"]}
    assert actions["stem"] == "keep" and actions["layer1.conv1"] == "octave"


def test_plan_channel_multiple_rounds_each_split(runner):
    """alpha 0.375 of 32 channels: floor gives 12 low channels, --channel-multiple 16 gives 16."""
    def lows(*extra):
        result = run(runner, "plan", TINY, "-s", "16", "-a", "0.375", "-f", "json", *extra)
        assert result.exit_code == 0, result.output
        return {layer["name"]: layer["out_low"] for layer in json.loads(result.stdout)["layers"]}

    assert lows()["layer1.conv2"] == 12
    rounded = lows("--channel-multiple", "16")
    assert rounded["layer1.conv2"] == 16 and all(low % 16 == 0 for low in rounded.values())


def test_model_options_with_a_checkpoint_are_refused(runner, workdir):
    assert run(runner, "convert", TINY, "-s", "16", "-o", "m.pt").exit_code == 0
    for command in ("report", "bench"):
        for option in (["--channel-multiple", "16"], ["--alpha", "0.5"], ["--input-size", "32"], ["--mode", "layer"]):
            if command == "bench" and option[0] == "--input-size":
                continue  # bench times a checkpoint at any size (tests/test_regions.py)
            result = run(runner, command, "m.pt", "--allow-import", *option)
            assert result.exit_code == 2, (command, option, result.output)
            assert f"{option[0]} applies to a model, not to a checkpoint" in result.stderr


def test_models_lists_torchvision(runner):
    result = run(runner, "models", "resnet*", "--format", "json")
    names = {row["name"]: row["task"] for row in json.loads(result.stdout)}
    assert names["resnet50"] == "classification" and "vgg16" not in names
    assert json.loads(run(runner, "models", "fcn_*", "-f", "json").stdout)[0]["task"] == "segmentation"


# --------------------------------------------------------------- bad input
def _policy(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["convert", "resnet5"], 2, "unknown model 'resnet5' (did you mean resnet50"),
        (["convert", TINY, "--alpha", "1.5"], 2, "alpha must be in [0, 1), got 1.5"),
        (["convert", TINY, "--alpha", "lots"], 2, "Invalid value for '--alpha'"),
        (["convert", TINY, "--channel-multiple", "0"], 2, "Invalid value for '--channel-multiple'"),
        (["convert", TINY, "--policy", "missing.yaml"], 2, "policy file not found: missing.yaml"),
        (["convert", TINY, "-s", "16", "--policy", "{bad_policy}"], 2, "unknown key 'alpah' (did you mean 'alpha'?)"),
        (["convert", TINY, "--weights", "missing.pt"], 2, "weights file not found: missing.pt"),
        (["convert", TINY, "--weights", "{wrong_weights}"], 2, "missing: stem.bias"),
        (["convert", "resnet18", "--weights", "IMAGENET1K_V1"], 2, "not in the local cache"),
        (["convert", TINY, "--input-size", "big"], 2, "--input-size: expected N, HxW or CxHxW"),
        (["convert", TINY, "--input-size", "1x16x16"], 2, "does not run on an input of shape 1x1x16x16"),
        (["convert", TINY, "--model-arg", "oops"], 2, "--model-arg: expected KEY=VALUE"),
        (["convert", TINY, "-m", "num_classes=[1"], 2, "--model-arg num_classes: '[1' is not a valid YAML value"),
        (["plan", TINY, "-m", "num_classes=a: b: c"], 2, "--model-arg num_classes: 'a: b: c' is not a valid YAML value"),
        (["bench", TINY, "-m", "num_classes=[1"], 2, "--model-arg num_classes: '[1' is not a valid YAML value"),
        (["convert", f"{TINY}_kwargs", "-s", "16", "-m", "scale=abc"], 2,
         "does not run on an input of shape 1x3x16x16: TypeError"),
        (["convert", TINY, "-s", "16", "-o", "no/such/dir/m.pt"], 2, "cannot write to no/such/dir"),
        (["convert", TINY, "-s", "16", "--policy", "{unmatched}", "--strict"], 2, "matches no conv"),
        (["report", "{corrupt}"], 2, "cannot read checkpoint"),
        (["convert", TINY, "--weights", "{whole_model}"], 2, "holds a whole pickled model (tests.nets.Block, tests.nets.TinyResNet"),
        (["report", "{foreign}"], 2, "is not an octswap checkpoint"),
        (["report", "missing.pt"], 2, "checkpoint not found: missing.pt"),
        (["frobnicate"], 2, "No such command"),
    ],
)
def test_bad_input_one_line_exit_code_nothing_written(runner, workdir, args, code, message, hub_dir):
    fixtures = {
        "bad_policy": _policy(workdir, "bad.yaml", "alpah: 0.5\n"),
        "unmatched": _policy(workdir, "unmatched.yaml", "rules:\n  - regex: '^nothing'\n    skip: true\n"),
        "wrong_weights": workdir / "w.pt",
        "corrupt": workdir / "corrupt.pt",
        "foreign": workdir / "foreign.pt",
        "whole_model": workdir / "whole.pt",
    }
    state = TinyResNet().state_dict()
    del state["stem.bias"]
    torch.save(state, fixtures["wrong_weights"])
    fixtures["corrupt"].write_bytes(b"\x00garbage")
    torch.save({"weights": torch.zeros(1)}, fixtures["foreign"])
    torch.save(TinyResNet(), fixtures["whole_model"])
    before = files(workdir)
    args = [a.format(**{k: str(v) for k, v in fixtures.items()}) for a in args]
    result = run(runner, *args)
    assert result.exit_code == code, result.output
    assert message in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.output
    if args[0] == "convert" and "--" not in message:
        assert len([line for line in result.stderr.splitlines() if line.startswith("octswap: error")]) == 1
    assert files(workdir) == before  # nothing written, nothing overwritten


def test_existing_output_needs_force(runner, workdir):
    target = workdir / "m.pt"
    target.write_bytes(b"keep me")
    result = run(runner, "convert", TINY, "-s", "16", "-o", target)
    assert result.exit_code == 2 and "exists; pass --force" in result.stderr
    assert target.read_bytes() == b"keep me"
    result = run(runner, "convert", TINY, "-s", "16", "-o", target, "--force")
    assert result.exit_code == 0 and octswap.read_checkpoint(target).plan.layers


def test_debug_shows_the_traceback(runner, workdir):
    result = run(runner, "convert", "resnet5", "--debug")
    assert result.exit_code != 0
    assert isinstance(result.exception, octswap.ModelLoadError)


def test_conversion_failure_exits_1(runner, workdir, tmp_path):
    script = tmp_path / "broken.py"
    script.write_text(
        "import torch\nfrom torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.conv = nn.Conv2d(3, 32, 3, padding=1)\n"
        "        self.mid = nn.Conv2d(32, 32, 3, padding=1)\n"
        "    def forward(self, x):\n"
        "        y = self.mid(self.conv(x))\n"
        "        # depends on the exact module type: breaks once 'mid' is converted\n"
        "        return y if type(self.mid) is nn.Conv2d else y[:, :, :1, :1].view(-1, 99)\n"
        "def build():\n    return Net()\n"
    )
    result = run(runner, "convert", f"{script}:build", "-s", "16", "-a", "0.5", "--mode", "layer")
    assert result.exit_code == 1, result.output
    assert "the converted model fails to run" in result.stderr
    assert files(workdir) == ["broken.py"]  # and no checkpoint


def test_help_and_version_do_not_import_torch():
    """`octswap --help` must answer at once: the library is imported inside the commands."""
    import subprocess
    import sys

    code = "import sys, octswap.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_public_api_names_resolve():
    import octswap.reporting  # noqa: F401  (a submodule import must not shadow the function)

    assert callable(octswap.report) and callable(octswap.convert) and callable(octswap.load)
    assert set(octswap.__all__) <= set(dir(octswap))


@pytest.mark.parametrize("command", ["convert", "report", "plan", "bench", "heal", "export", "zoo", "models"])
def test_command_help_exits_0(runner, command):
    """A command's own exit (typer.Exit is a RuntimeError) is not an error for the error map."""
    result = run(runner, command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout and "error" not in result.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["frobnicate"], "No such command 'frobnicate'. (see 'octswap --help')"),
        (["convert", TINY, "-f", "xml"], "Invalid value for '--format'"),
        (["convert", TINY, "--alpah", "0.5"], "No such option: --alpah"),
        (["bench", TINY, "--rounds", "0"], "Invalid value for '--rounds'"),
    ],
)
def test_usage_errors_are_one_line(runner, args, message):
    """click's own usage errors read like every other input error: one line, exit 2."""
    result = run(runner, *args)
    assert result.exit_code == 2
    assert result.stderr.startswith("octswap: error: ") and message in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Usage:" not in result.output
    assert run(runner, "convert").exit_code == 2  # nothing to convert: click's "Missing argument", one line too


def test_python_dash_m_runs_the_cli():
    """`torchrun ... -m octswap.cli heal ...` (README) needs the package to run as a module."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "octswap.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"octswap {octswap.__version__}"


def test_a_bad_builder_value_is_named_not_the_input_shape(runner, workdir):
    result = run(runner, "plan", f"{TINY}_kwargs", "-s", "16", "-m", "scale=abc")
    assert result.exit_code == 2
    assert "(built with --model-arg scale=abc: check those values)" in result.stderr


def test_a_size_the_model_refuses_is_named_not_the_builder_values(runner, workdir):
    result = run(runner, "plan", "tests.nets:size_checked_segmenter", "-m", "classes=3", "-s", "30")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "at --input-size 30; the model runs at its default size, 224x224" in result.stderr
    assert "check those values" not in result.stderr


def test_a_builder_argument_nothing_takes_is_warned_about(runner, workdir):
    result = run(runner, "plan", f"{TINY}_kwargs", "-s", "16", "-m", "num_clases=3", "-m", "scale=2", "-f", "json")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "model argument" in line]
    assert len(warnings) == 1, result.stderr  # scale is popped inside the factory's module: no warning
    assert "num_clases=3" in warnings[0] and "did you mean num_classes?" in warnings[0]
    json.loads(result.stdout)
