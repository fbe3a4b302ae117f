"""timm models by name (``timm:NAME``): built with ``timm.create_model``, never downloaded.

timm is an optional dependency (``pip install 'octswap[timm]'``); without it, naming a
timm model is one clear error. Weights files go through timm's own loader, which reads
its checkpoint formats (``state_dict``, ``state_dict_ema``/``model_ema``, ``module.``
prefixes, ``.safetensors``) with ``weights_only=True``.

Example:
    >>> model = build_timm_model("resnet18")                                  # doctest: +SKIP
    >>> default_input_shape(model)                                            # doctest: +SKIP
    (3, 224, 224)
"""

from __future__ import annotations

import difflib
import fnmatch
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from octswap.errors import ModelLoadError, WeightsError, one_line
from octswap.serialization import load_tensors, require_file

__all__ = ["PREFIX", "build_timm_model", "default_input_shape", "is_timm_name", "list_timm_models", "load_timm_weights", "require_timm"]

#: Model names starting with this prefix are timm's.
PREFIX = "timm:"


def is_timm_name(spec: str) -> bool:
    return spec.startswith(PREFIX)


def require_timm() -> ModuleType:
    """``import timm``, or one clear error naming the extra to install.

    Raises:
        ModelLoadError: timm is not installed.
    """
    try:
        import timm
    except ImportError:
        raise ModelLoadError("timm models need timm: pip install 'octswap[timm]'") from None
    return timm


def build_timm_model(name: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)`` in eval mode (random weights).

    Raises:
        ModelLoadError: timm is missing, the name is unknown, or the builder fails.
    """
    timm = require_timm()
    known = timm.list_models()
    if name not in known and name.split(".")[0] not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join('timm:' + c for c in close)}?)" if close else " (see `octswap models 'timm:*'`)"
        raise ModelLoadError(f"unknown timm model {name!r}{hint}")
    kwargs = dict(kwargs or {})
    if kwargs.pop("pretrained", False):
        raise ModelLoadError("octswap never downloads weights: give a local checkpoint with --weights FILE instead of pretrained")
    try:
        return timm.create_model(name, pretrained=False, **kwargs).eval()
    except (TypeError, ValueError, RuntimeError, AssertionError) as err:
        raise ModelLoadError(f"cannot build timm:{name} with {kwargs}: {one_line(err)}") from None


def load_timm_weights(model: nn.Module, path: str | Path) -> dict[str, torch.Tensor]:
    """A timm checkpoint's state dict (EMA weights when the file has them), read by timm's loader.

    Raises:
        WeightsError: the file is missing or unreadable, or holds pickled objects.
    """
    timm = require_timm()
    path = Path(path)
    require_file(path, what="weights file", error=WeightsError)
    try:
        return timm.models.load_state_dict(str(path), use_ema=True)
    except Exception as err:  # noqa: BLE001 - torch, safetensors and timm raise many types for bad files
        if path.suffix != ".safetensors":
            # Say what the file holds (pickled classes, not a torch.save file) as for any
            # other weights file: this raises WeightsError when the file is the problem.
            load_tensors(path, what="weights file", error=WeightsError,
                         instead="save the weights with torch.save(model.state_dict(), PATH) and pass that file")  # fmt: skip
        raise WeightsError(f"cannot read weights file {path}: {type(err).__name__}: {one_line(err)}") from None


def default_input_shape(model: nn.Module) -> tuple[int, int, int] | None:
    """The model's ``pretrained_cfg["input_size"]`` (C, H, W), if timm records one."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return (int(size[0]), int(size[1]), int(size[2])) if size and len(size) == 3 else None


def list_timm_models(pattern: str = "*") -> list[str]:
    """timm's model names matching a glob (timm's own listing), ``timm:``-prefixed."""
    timm = require_timm()
    return [PREFIX + name for name in timm.list_models() if fnmatch.fnmatch(name, pattern)]
