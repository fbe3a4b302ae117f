"""Reading ``torch.save`` files safely, with errors that say what a file holds.

Every file octswap reads (weights, checkpoints, ``.pt`` data) goes through
:func:`load_tensors`: ``torch.load(weights_only=True)``, which unpickles plain data and
tensors only and never runs code from the file. A file that needs more — most often a
whole model saved with ``torch.save(model)`` — is refused with one line naming the
classes it would import (read from the pickle without importing them, by
``torch.serialization.get_unsafe_globals_in_checkpoint``) and what to save instead.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from octswap.errors import OctswapError, one_line, printable

__all__ = ["load_tensors", "require_file"]

_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _pickled_classes(path: Path) -> list[str]:
    """The globals a pickle would import (``module.Class``), without importing them."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - best effort: the caller reports the load error instead
        return []
    # The user's own classes first (the model's), torch's building blocks after.
    return sorted(found, key=lambda name: (name.startswith("torch."), name))


def require_file(path: Path, *, what: str, error: type[OctswapError]) -> None:
    """Raise ``error`` unless ``path`` is a non-empty file (missing, a folder, empty: each its own line)."""
    if not path.exists():
        raise error(f"{what} not found: {path}")
    if path.is_dir():
        raise error(f"{what} {path} is a folder, not a file")
    if path.stat().st_size == 0:
        raise error(f"{what} {path} is empty")


def load_tensors(path: str | Path, *, what: str, error: type[OctswapError], instead: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, its failures as one-line ``error``\\s.

    Args:
        path: a file written by ``torch.save``.
        what: what the file should be, for messages ("weights file").
        error: the :class:`~octswap.errors.OctswapError` subclass to raise.
        instead: what to save instead of pickled objects, e.g.
            ``"save torch.save(model.state_dict(), PATH) and pass that file"``.

    Raises:
        error: the file is missing, not a ``torch.save`` file, or holds pickled objects
            (classes) that a weights-only load refuses.

    Example:
        >>> state = load_tensors("w.pt", what="weights file", error=WeightsError,   # doctest: +SKIP
        ...                      instead="save model.state_dict()")
    """
    path = Path(path)
    require_file(path, what=what, error=error)
    try:
        with warnings.catch_warnings():  # torch warns about legacy pickles; the error says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # The zip format (torch.save's default) lists its classes; for the legacy format
        # the weights-only unpickler names the first one it refused.
        classes = _pickled_classes(path) or _UNSUPPORTED_GLOBAL.findall(str(err))[:1]
        if not classes:  # not a pickle of objects at all
            raise error(f"cannot read {what} {path}: not a torch.save file") from None
        shown = ", ".join(printable(c) for c in classes[:2]) + (f" and {len(classes) - 2} more classes" if len(classes) > 2 else "")
        kind = "a whole pickled model" if any(c.startswith("torch.nn.modules.") for c in classes) else "pickled Python objects"
        raise error(
            f"{path} holds {kind} ({shown}), not plain tensors; octswap does not load pickled code: {instead}"
        ) from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        detail = one_line(err)
        cause = type(err).__name__ if detail == type(err).__name__ else f"{type(err).__name__}: {detail}"
        raise error(f"cannot read {what} {path}: not a complete torch.save file ({cause})") from None
