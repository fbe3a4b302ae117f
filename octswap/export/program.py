"""``torch.export`` programs (``.pt2``): written with ``torch.export.save``, loaded with
``torch.export.load(path).module()`` in any process with torch, without octswap."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from octswap.export.validation import flatten_outputs

__all__ = ["METADATA_FILE", "read_program_metadata", "run_program", "write_program"]

#: Name of the extra file in the archive that holds octswap's metadata (JSON).
METADATA_FILE = "octswap.json"


def write_program(
    model: nn.Module,
    example: Tensor,
    path: Path,
    *,
    dynamic_axes: Mapping[int, str],
    opset: int | None,
    metadata: Mapping[str, str],
) -> dict[str, Any]:
    """``torch.export.export`` ``model`` at ``example`` and save it to ``path`` (overwritten).

    Dynamic axes are ``Dim.AUTO``: an axis the model fixes (a flatten into a ``Linear``)
    becomes static instead of failing. ``opset`` does not apply and must be ``None``.
    """
    if opset is not None:
        raise ValueError("--opset applies to ONNX files only")
    spec = {axis: torch.export.Dim.AUTO for axis in dynamic_axes}
    program = torch.export.export(model, (example,), dynamic_shapes=(spec,) if spec else None, strict=False)
    torch.export.save(program, str(path), extra_files={METADATA_FILE: json.dumps(dict(metadata), sort_keys=True)})
    return {"nodes": sum(1 for n in program.graph.nodes if n.op == "call_function")}


def read_program_metadata(path: str | Path) -> dict[str, str]:
    """octswap's metadata stored in a ``.pt2`` file."""
    extra = {METADATA_FILE: ""}
    torch.export.load(str(path), extra_files=extra)
    return json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else {}


def run_program(path: str | Path) -> Callable[[Tensor], list[Tensor]]:
    """A function that runs one input through the saved program."""
    module = torch.export.load(str(path)).module()

    def run(x: Tensor) -> list[Tensor]:
        with torch.no_grad():
            return flatten_outputs(module(x))

    return run
