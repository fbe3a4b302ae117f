"""Files octswap reads are loaded weights-only; what it refuses, it names in one line."""

from __future__ import annotations

import pathlib

import pytest
import torch

import octswap
from octswap.errors import CheckpointError, InputError, WeightsError, one_line
from octswap.models import load_state_dict_file
from tests.nets import TinyResNet


class Touch:
    """Unpickling this object would create ``marker``: running code from the file."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_whole_pickled_model_is_named_not_loaded(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(TinyResNet(), path)
    with pytest.raises(WeightsError) as info:
        load_state_dict_file(path)
    text = str(info.value)
    # The user's classes first (sorted), torch's building blocks after.
    assert text.startswith(f"{path} holds a whole pickled model (tests.nets.Block, tests.nets.TinyResNet and ")
    assert "torch.save(model.state_dict(), PATH)" in text
    assert "\x1b" not in text and "\n" not in text


def test_pickled_code_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": Touch(marker)}, path)
    for read, error in ((load_state_dict_file, WeightsError), (octswap.read_checkpoint, CheckpointError)):
        with pytest.raises(error, match="holds pickled Python objects .*does not load pickled code"):
            read(path)
    with pytest.raises(InputError, match="holds pickled Python objects"):
        octswap.open_data(path, input_shape=(3, 4, 4))
    assert not marker.exists()


def test_folder_and_truncated_file(tmp_path):
    with pytest.raises(WeightsError, match="is a folder, not a file"):
        load_state_dict_file(tmp_path)
    path = tmp_path / "cut.pt"
    torch.save(TinyResNet().state_dict(), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(WeightsError, match="cannot read weights file .*: not a complete torch.save file"):
        load_state_dict_file(path)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: octswap.load_policy(None), r"load_policy\(\) takes the path of a YAML policy file .*Policy\(alpha=...\)\), got None"),
        (lambda: octswap.load(None), r"load\(\) takes the path of an octswap checkpoint, got None"),
        (lambda: octswap.read_checkpoint(3), r"read_checkpoint\(\) takes the path of an octswap checkpoint, got int 3"),
        (lambda: octswap.open_data(None, input_shape=(3, 4, 4)), r"open_data\(\) takes the path of a data folder"),
        (lambda: octswap.load_model(None), r"load_model\(\) takes a model name"),
        (lambda: octswap.load_model("resnet18", weights=""), r"load_model\(\) takes the path of a weights file .*got an empty string"),
        (lambda: load_state_dict_file(None), r"load_state_dict_file\(\) takes the path"),
    ],
)
def test_public_loaders_reject_none_clearly(call, message):
    with pytest.raises(TypeError, match=message):
        call()


def test_one_line_strips_terminal_escapes():
    err = RuntimeError("Weights only load failed. \x1b[1mdo this only if you trust it\x1b[0m.\n\t(1) more")
    assert one_line(err) == "Weights only load failed. do this only if you trust it."
    assert one_line(ValueError()) == "ValueError"


def test_escape_codes_in_names_and_paths_never_reach_the_terminal(tmp_path):
    from typer.testing import CliRunner

    from octswap.cli import app

    path = tmp_path / "esc\x1b[31mname.pt"
    result = CliRunner().invoke(app, ["convert", "tests.nets:tiny_resnet", "--weights", str(path)])
    assert result.exit_code == 2 and "\x1b" not in result.stderr and "esc\\x1b[31mname.pt" in result.stderr


def test_empty_legacy_and_folder_files_get_their_own_line(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="is empty"):
        load_state_dict_file(empty)
    legacy = tmp_path / "legacy.pt"
    torch.save(TinyResNet(), legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(WeightsError, match=r"holds pickled Python objects \(tests.nets.TinyResNet\).*model.state_dict\(\)"):
        load_state_dict_file(legacy)
    with pytest.raises(CheckpointError, match="is a folder, not a file"):
        octswap.read_checkpoint(tmp_path)


def test_open_data_checks_its_arguments(tmp_path):
    path = tmp_path / "d.pt"
    torch.save({"inputs": torch.randn(4, 3, 8, 8)}, path)
    for shape in (None, "3x8x8", (3, 0, 8), (3, 8), (3, 8.0, 8)):
        with pytest.raises(TypeError, match=r"input_shape=\(C, H, W\) of positive ints"):
            octswap.open_data(path, input_shape=shape)
    with pytest.raises(TypeError, match="limit as an int"):
        octswap.open_data(path, input_shape=(3, 8, 8), limit="a")
