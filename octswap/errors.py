"""Errors octswap raises on purpose; each carries the exit code the CLI uses for it."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = [
    "CheckpointError",
    "ConversionError",
    "ExportValidationError",
    "MissingExtraError",
    "InputError",
    "ModelLoadError",
    "OctswapError",
    "OutputExistsError",
    "PolicyError",
    "UntraceableError",
    "WeightsError",
    "one_line",
    "printable",
    "path_argument",
]


class OctswapError(Exception):
    """Base class: a failure octswap understands and can explain in one line."""

    exit_code = 1


class InputError(OctswapError):
    """Bad usage or input from the user (exit 2)."""

    exit_code = 2


class PolicyError(InputError):
    """A policy file or value is invalid; the message names the key and value."""


class ModelLoadError(InputError):
    """The model cannot be found or built from what the user named."""


class WeightsError(InputError):
    """Weights are missing, unreadable or do not fit the model."""


class CheckpointError(InputError):
    """A checkpoint is missing, corrupt, foreign or cannot be rebuilt."""


class OutputExistsError(InputError):
    """Refusing to overwrite an existing file without ``force``."""


class MissingExtraError(InputError):
    """An optional dependency (a ``pip install 'octswap[EXTRA]'`` extra) is not installed (exit 2)."""


class ConversionError(OctswapError):
    """The conversion or its verification failed (exit 1)."""


class UntraceableError(ConversionError):
    """``torch.fx`` cannot trace the model, so graph mode cannot rewrite it (exit 1).

    ``detail`` is fx's own first line, e.g. ``TraceError: symbolically traced variables
    cannot be used as inputs to control flow``.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"the model does not trace with torch.fx ({detail}); use --mode auto, --mode regions or --mode layer"
        )
        self.detail = detail


class ExportValidationError(ConversionError):
    """An exported file computes something other than the PyTorch model (exit 1); nothing was written."""


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def printable(text: str) -> str:
    """``text`` with control characters (terminal escapes in a file name or a pickled
    class name, say) shown escaped, ``\\x1b``, instead of acting on the terminal."""
    return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in text)


def one_line(error: BaseException | str) -> str:
    """The first line of an error's message without terminal escape codes (the type's name
    when the message is empty), for one-line diagnostics."""
    text = _ANSI.sub("", str(error)).strip()
    if text:
        return text.splitlines()[0].strip()
    return type(error).__name__ if isinstance(error, BaseException) else ""


def path_argument(value: object, *, function: str, expected: str) -> Path:
    """``value`` as a :class:`~pathlib.Path`, for public functions that read a file.

    Raises:
        TypeError: ``value`` is not a ``str`` or ``os.PathLike`` (``None`` included),
            naming the function and what it expects.
    """
    if isinstance(value, (str, os.PathLike)) and str(value):
        return Path(value)
    got = "an empty string" if value == "" else "None" if value is None else f"{type(value).__name__} {value!r}"
    raise TypeError(f"{function}() takes the path of {expected}, got {got}")
