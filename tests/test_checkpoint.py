"""Checkpoints: safe format, atomic writes, no overwrite, clear errors on bad files."""

from __future__ import annotations

import pytest
import torch

import octswap
from octswap.checkpoint import FORMAT, atomic_write, read
from octswap.errors import CheckpointError, InputError, OutputExistsError
from octswap.models import ModelSource, load_model


@pytest.fixture
def converted(tiny_resnet):
    model, source = load_model("tests.nets:tiny_resnet")
    conv, plan = octswap.convert(model, alpha=0.5, input_shape=(3, 16, 16))
    return model, conv, plan, source


def test_round_trip_with_weights_only(tmp_path, converted):
    _, conv, plan, source = converted
    path = octswap.save(tmp_path / "m.pt", conv, plan, source=source, report={"flops_before": 1})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["format_version"] == 1
    assert raw["source"]["name"] == "tests.nets:tiny_resnet" and raw["report"] == {"flops_before": 1}
    with pytest.raises(CheckpointError, match="pass allow_import=True"):
        octswap.load(path)
    again = octswap.load(path, allow_import=True)
    x = torch.randn(2, 3, 19, 23)
    with torch.no_grad():
        assert torch.equal(again(x), conv.eval()(x))
    assert not again.training


def test_load_onto_a_given_model(tmp_path, converted):
    _, conv, plan, _ = converted
    path = octswap.save(tmp_path / "m.pt", conv, plan, source=ModelSource(kind="user", name="in-memory"))
    with pytest.raises(CheckpointError, match="cannot rebuild"):
        octswap.load(path)
    from tests.nets import TinyResNet

    again = octswap.load(path, model=TinyResNet())
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(again(x), conv.eval()(x))


def test_no_overwrite_without_force(tmp_path, converted):
    _, conv, plan, source = converted
    path = tmp_path / "m.pt"
    path.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="exists; pass --force"):
        octswap.save(path, conv, plan, source=source)
    assert path.read_bytes() == b"precious"
    octswap.save(path, conv, plan, source=source, force=True)
    assert read(path).plan == plan
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temporary files left


def test_interrupted_write_leaves_nothing(tmp_path):
    def fail(tmp):
        tmp.write_bytes(b"half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "out.pt", fail)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder(tmp_path):
    with pytest.raises(InputError, match="cannot write to"):
        atomic_write(tmp_path / "no" / "such" / "dir" / "x.pt", lambda tmp: None)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"garbage bytes", "cannot read checkpoint"),
        ({"state_dict": {}}, "is not an octswap checkpoint"),
        ({"format": FORMAT, "format_version": 99}, "has checkpoint format 99; this octswap"),
        ({"format": FORMAT, "format_version": 1, "source": {}}, "is damaged"),
    ],
)
def test_bad_checkpoints(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        octswap.load(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read(tmp_path / "nope.pt")


def test_pickled_classes_are_refused(tmp_path):
    """A file that needs arbitrary unpickling is rejected, not executed."""
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": torch.nn.Linear(1, 1)}, path)
    with pytest.raises(CheckpointError, match="holds a whole pickled model .*does not load pickled code"):
        read(path)


def test_tampered_state_dict_is_listed(tmp_path, converted):
    _, conv, plan, source = converted
    path = octswap.save(tmp_path / "m.pt", conv, plan, source=source)
    raw = torch.load(path, weights_only=True)
    raw["state_dict"].pop("head.bias")
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="missing: head.bias"):
        octswap.load(path, allow_import=True)


def test_state_dict_versions_survive_checkpoints(tmp_path):
    model, source = load_model("mnasnet0_5")
    converted, plan = octswap.convert(model, alpha=0.25, input_shape=(3, 64, 64), mode="layer")
    path = octswap.save(tmp_path / "m.pt", converted, plan, source=source)
    again = octswap.load(path)  # MNASNet._load_from_state_dict needs the versions
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(x), converted.eval()(x))


def test_checkpoint_files_get_the_umask_mode(tmp_path, tiny_resnet):
    import os

    converted, plan = octswap.convert(tiny_resnet, alpha=0.5, input_shape=(3, 16, 16))
    path = octswap.save(tmp_path / "m.pt", converted, plan, source=octswap.ModelSource("import", "tests.nets:tiny_resnet"))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
