"""Where models come from: torchvision by name, or a user's own factory.

A :class:`ModelSource` records how a model was built (name or import path,
builder arguments, versions) so a checkpoint can rebuild the same architecture
before loading its weights. Nothing here downloads: torchvision weights are used
only when they already sit in the local torch hub cache.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from octswap.builder_args import warn_unclaimed
from octswap.errors import ModelLoadError, WeightsError, one_line, path_argument
from octswap.serialization import load_tensors
from octswap.timm_models import PREFIX as TIMM_PREFIX
from octswap.timm_models import build_timm_model, is_timm_name, load_timm_weights
from octswap.timm_models import default_input_shape as timm_input_shape

__all__ = ["ModelSource", "convertible_models", "load_model", "load_state_dict_file"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """How to rebuild a model's architecture.

    Attributes:
        kind: ``"torchvision"`` (a registered torchvision builder), ``"timm"``
            (``timm.create_model``), ``"import"`` (``package.module:factory`` or
            ``path/to/file.py:factory``) or ``"user"`` (an in-memory model octswap
            cannot rebuild by itself).
        name: The torchvision name, ``timm:NAME`` or the import path.
        kwargs: Builder keyword arguments.
        weights: What the weights came from (a torchvision weights name or a file path), if any.
    """

    kind: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    torchvision_version: str = torchvision.__version__
    torch_version: str = torch.__version__

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "name": self.name, "kwargs": dict(self.kwargs), "weights": self.weights,
            "torchvision_version": self.torchvision_version, "torch_version": self.torch_version,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSource:
        return cls(**dict(data))

    def build(self) -> nn.Module:
        """Build the architecture with random weights (no weights are loaded)."""
        if self.kind == "torchvision":
            return _build_torchvision(self.name, None, dict(self.kwargs))
        if self.kind == "import":
            return _build_import(self.name, dict(self.kwargs))
        if self.kind == "timm":
            return build_timm_model(self.name.removeprefix(TIMM_PREFIX), dict(self.kwargs))
        raise ModelLoadError(f"a {self.kind!r} model source cannot be rebuilt; pass the original model")

    def load(self, *, weights: str | None = None) -> nn.Module:
        """Rebuild the original *with its trained weights* (``weights`` replaces the recorded ones).

        Raises:
            WeightsError: no weights are recorded or given, or they cannot be read.
            ModelLoadError: the architecture cannot be rebuilt.
        """
        chosen = weights or self.weights
        if chosen is None:
            raise WeightsError(
                f"the original {self.name} was converted from random weights (none recorded); "
                "give its trained weights file (--teacher-weights FILE; weights= in Python)"
            )
        if self.kind not in ("torchvision", "import", "timm"):
            raise ModelLoadError(f"a {self.kind!r} model source cannot be rebuilt; pass the original model")
        model, _ = load_model(self.name, weights=chosen, kwargs=self.kwargs)
        return model


def default_input_shape(model: nn.Module) -> tuple[int, int, int]:
    """The probe input ``(C, H, W)`` a model is meant for: a timm model's
    ``pretrained_cfg["input_size"]``, otherwise ``(3, 224, 224)``."""
    return timm_input_shape(model) or (3, 224, 224)


def file_stem(text: str) -> str:
    """``text`` (a model name, import path or spec) as a file-name-safe stem: every character
    outside ``[A-Za-z0-9_.-]`` becomes ``_``.

    Example:
        >>> file_stem("tests.nets:tiny/resnet")
        'tests.nets_tiny_resnet'
    """
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def convertible_models() -> list[str]:
    """torchvision models octswap can build by name (classification first, then the others)."""
    from torchvision import models

    classification = models.list_models(module=models)
    others = [m for m in models.list_models() if m not in classification]
    return classification + sorted(others)


def _close(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else " (see `octswap models`)"


@contextmanager
def _no_downloads() -> Iterator[None]:
    """Turn any download torch.hub would start into a clear error (no network at run time)."""

    def refuse(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
        raise WeightsError(
            f"building this model would download {url} and octswap never downloads; "
            f"put the file at {dst.rsplit('.', 1)[0] if dst.endswith('.partial') else dst} first"
        )

    original = torch.hub.download_url_to_file
    torch.hub.download_url_to_file = refuse  # type: ignore[assignment]
    # Hugging Face's hub (smp's and timm's weights): offline while the model is built, so a file
    # not in its cache fails at once instead of after retries.
    hub = importlib.import_module("huggingface_hub.constants") if importlib.util.find_spec("huggingface_hub") else None
    offline = getattr(hub, "HF_HUB_OFFLINE", None)
    if hub is not None:
        hub.HF_HUB_OFFLINE = True
    try:
        yield
    except Exception as err:
        if type(err).__name__ not in _HUB_MISSING:
            raise
        raise WeightsError(f"building this model would download weights from the Hugging Face hub and octswap "
                           f"never downloads ({type(err).__name__}); put them in the hub's cache first, or build "
                           f"without them (smp: -m encoder_weights=None)") from None  # fmt: skip
    finally:
        torch.hub.download_url_to_file = original  # type: ignore[assignment]
        if hub is not None:
            hub.HF_HUB_OFFLINE = offline


#: huggingface_hub's errors for a file that is not in its cache while offline.
_HUB_MISSING = frozenset({"LocalEntryNotFoundError", "OfflineModeIsEnabled"})


def _build_torchvision(name: str, weights: Any, kwargs: dict[str, Any]) -> nn.Module:
    from torchvision import models

    known = models.list_models()
    if name not in known:
        raise ModelLoadError(f"unknown model {name!r}{_close(name, known)}")
    # Segmentation/detection builders fetch ImageNet backbone weights unless told not to.
    if "weights_backbone" in inspect.signature(models.get_model_builder(name)).parameters:
        kwargs = {"weights_backbone": None, **kwargs}
    if "weights" in kwargs:
        raise ModelLoadError(f"give {name}'s weights with --weights (weights= in Python), not as a builder argument")
    try:
        with _no_downloads():
            model = models.get_model(name, weights=weights, **kwargs)
    except TypeError as err:
        raise ModelLoadError(f"cannot build {name} with {kwargs}: {err}") from None
    except (ValueError, LookupError) as err:  # LookupError: a weights enum name it does not know
        raise ModelLoadError(f"cannot build {name}: {_short(one_line(err))}") from None
    warn_unclaimed(name, models.get_model_builder(name), model, kwargs)
    return model


def _keyword_hint(factory: Any, err: TypeError) -> str:
    """`` (did you mean num_classes?)`` for a keyword ``factory`` does not take, from its signature."""
    found = re.search(r"unexpected keyword argument '(\w+)'", str(err))
    try:
        names = list(inspect.signature(factory).parameters) if found else []
    except (TypeError, ValueError):
        names = []
    close = difflib.get_close_matches(found.group(1), names, n=3, cutoff=0.6) if found and names else []
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _short(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters (a factory's message may list every choice it has)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _without_pretrained_encoder(factory: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``encoder_weights=None`` unless given: segmentation_models_pytorch's models fetch ImageNet
    encoder weights by default (from the Hugging Face hub), and octswap never downloads."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C factory without a signature
        return kwargs
    if "encoder_weights" in parameters and "encoder_weights" not in kwargs:
        logger.info("building with encoder_weights=None (random encoder; octswap never downloads)")
        return {"encoder_weights": None, **kwargs}
    return kwargs


def _build_import(path: str, kwargs: dict[str, Any]) -> nn.Module:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ModelLoadError(f"expected 'package.module:factory' or 'file.py:factory', got {path!r}")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise ModelLoadError(f"model file not found: {file}")
            spec = importlib.util.spec_from_file_location(f"octswap_user_{file.stem}", file)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ModelLoadError:
        raise
    except ImportError as err:
        raise ModelLoadError(f"cannot import {module_name!r}: {err}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ModelLoadError(f"{module_name!r} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelLoadError(f"{path} is not callable")
    kwargs = _without_pretrained_encoder(obj, kwargs)
    try:
        with _no_downloads():
            model = obj(**kwargs)
    except TypeError as err:  # e.g. an unknown --model-arg
        raise ModelLoadError(f"cannot build {path} with {kwargs}: {one_line(err)}{_keyword_hint(obj, err)}") from None
    except (KeyError, ValueError, LookupError, AttributeError, RuntimeError) as err:  # a bad value the factory rejects
        why = f"{type(err).__name__}: {_short(one_line(err))}"
        raise ModelLoadError(f"cannot build {path} with {kwargs}: {why}") from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{path} returned a {type(model).__name__}, not an nn.Module")
    warn_unclaimed(path, obj, model, kwargs)
    return model


def _load_timm(spec: str, weights: str | None, kwargs: dict[str, Any]) -> tuple[nn.Module, ModelSource]:
    """``timm:NAME``: built by timm with random weights; a local checkpoint through timm's loader."""
    model = build_timm_model(spec.removeprefix(TIMM_PREFIX), kwargs)
    recorded = None
    if weights is not None:
        apply_state_dict(model, load_timm_weights(model, weights), what=f"weights file {weights}")
        recorded = str(Path(weights).resolve())
    return model.eval(), ModelSource(kind="timm", name=spec, kwargs=kwargs, weights=recorded)


def _torchvision_weights(name: str, spec: str) -> Any:
    """Resolve a weights name (``DEFAULT``, ``IMAGENET1K_V2`` or ``ResNet50_Weights.IMAGENET1K_V2``)
    and insist that its file is already in the local cache."""
    from torchvision import models

    try:
        enum = models.get_model_weights(name)
    except (ValueError, KeyError):
        raise WeightsError(f"{name} has no torchvision weights; pass a state-dict file") from None
    member = spec.split(".", 1)[1] if spec.startswith(enum.__name__ + ".") else spec
    try:
        weights = enum[member] if member != "DEFAULT" else enum.DEFAULT
    except KeyError:
        choices = ["DEFAULT", *enum.__members__]
        raise WeightsError(
            f"{spec!r} is neither a file nor a weights name of {name}{_close(member, choices)}"
        ) from None
    filename = os.path.basename(urlparse(weights.url).path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not cached.is_file():
        raise WeightsError(
            f"{enum.__name__}.{weights.name} is not in the local cache ({cached}) and octswap never "
            f"downloads; copy the file there, or pass a state-dict file with --weights PATH"
        )
    return weights


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict saved with ``torch.save`` (safely: ``weights_only=True``).

    Accepts a bare state dict or one wrapped under ``state_dict``/``model``, and
    strips a ``module.`` prefix left by ``DataParallel``.
    """
    path = path_argument(path, function="load_state_dict_file", expected="a weights file written by torch.save")
    data = load_tensors(path, what="weights file", error=WeightsError,
                        instead="save the weights with torch.save(model.state_dict(), PATH) and pass that file")  # fmt: skip
    if isinstance(data, Mapping):
        for key in ("state_dict", "model"):
            inner = data.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                data = inner
                break
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    # Keep the per-module versions torch.save stores beside the tensors (state_dict._metadata):
    # some modules (BatchNorm, torchvision's MNASNet) read them while loading.
    metadata = getattr(data, "_metadata", None)
    strip = bool(data) and all(k.startswith("module.") for k in data)
    state: OrderedDict[str, torch.Tensor] = OrderedDict(
        (k.removeprefix("module.") if strip else k, v) for k, v in data.items()
    )
    if metadata is not None:
        state._metadata = OrderedDict(  # type: ignore[attr-defined]
            ((k.removeprefix("module.") if strip and k != "module" else "" if strip else k), v)
            for k, v in metadata.items()
        )
    return state


def apply_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *, what: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]  # fmt: skip
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label}: {', '.join(keys[:5])}{more}")
        raise WeightsError(f"{what} does not fit the model; " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_model(
    spec: str,
    *,
    weights: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, ModelSource]:
    """Build a model by torchvision name or import path, optionally with weights.

    Args:
        spec: A torchvision model name (``resnet50``), a timm model (``timm:resnet50d``,
            needs the ``timm`` extra; never pretrained), or ``package.module:factory``
            / ``path/to/file.py:factory`` for a user's own model.
        weights: A state-dict file (for timm models any checkpoint timm's loader reads),
            or a torchvision weights name that is already in the local cache. ``None``
            keeps the random initialisation.
        kwargs: Builder keyword arguments (``num_classes=10``...).

    Example:
        >>> model, source = load_model("resnet18", kwargs={"num_classes": 10})
        >>> source.to_dict()["name"]
        'resnet18'

    Raises:
        ModelLoadError: unknown name, failed import or builder.
        WeightsError: weights missing, not cached, unreadable or not fitting.
        TypeError: ``spec`` is not a non-empty string or ``weights`` not a path.
    """
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"load_model() takes a model name or package.module:factory string, got {spec!r}")
    if weights is not None:
        weights = str(path_argument(weights, function="load_model", expected="a weights file or torchvision weights name"))
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise TypeError(f"load_model() takes kwargs as a mapping of builder arguments, got {kwargs!r}")
    kwargs = dict(kwargs or {})
    if is_timm_name(spec):
        return _load_timm(spec, weights, kwargs)
    is_import = ":" in spec
    kind = "import" if is_import else "torchvision"
    weight_file = weights is not None and (Path(weights).exists() or Path(weights).suffix in {".pt", ".pth", ".bin", ".ckpt"})
    if is_import:
        if weights is not None and not weight_file:
            raise WeightsError(f"weights file not found: {weights}")
        model = _build_import(spec, kwargs)
    elif weights is not None and not weight_file:
        model = _build_torchvision(spec, _torchvision_weights(spec, weights), kwargs)
    else:
        model = _build_torchvision(spec, None, kwargs)
    if weight_file:
        assert weights is not None
        apply_state_dict(model, load_state_dict_file(weights), what=f"weights file {weights}")
    model.eval()
    # A file is recorded by its absolute path, so the original can be found again later
    # (fidelity, healing) from another working directory.
    recorded = str(Path(weights).resolve()) if weight_file and weights is not None else weights
    module_name, _, attr = spec.partition(":")
    if is_import and module_name.endswith(".py"):  # a model file, likewise by its absolute path
        spec = f"{Path(module_name).resolve()}:{attr}"
    return model, ModelSource(kind=kind, name=spec, kwargs=kwargs, weights=recorded)
