"""Errors octswap raises on purpose; each carries the exit code the CLI uses for it."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConversionError",
    "InputError",
    "ModelLoadError",
    "OctswapError",
    "OutputExistsError",
    "PolicyError",
    "WeightsError",
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


class ConversionError(OctswapError):
    """The conversion or its verification failed (exit 1)."""
