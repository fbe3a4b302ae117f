"""Checkpoints that reload safely: plain data and tensors, no pickled classes.

One ``torch.save`` file holding a dict::

    format          "octswap-checkpoint"
    format_version  1
    octswap_version, created
    source          how to rebuild the original architecture (see ModelSource)
    plan            the resolved plan (policy included), replayed on load
    state_dict      the converted model's weights
    state_dict_metadata  per-module state-dict versions (``state_dict._metadata``)
    report          the cost summary printed at conversion
    inference       (optional) how the model was prepared for inference
                    (:class:`octswap.inference.InferenceOptions`), replayed on load
    healing         (optional) how the model was healed by distillation, with the
                    fidelity measured before and after (:mod:`octswap.healing`)
    training        (optional) the state of an unfinished healing run (optimizer,
                    scheduler, position), for ``octswap heal --resume``

It loads with ``torch.load(path, weights_only=True)``. :func:`load` rebuilds the
original architecture from ``source`` (random init), replays ``plan``, then
loads ``state_dict`` strictly. Writes are atomic: a temporary file in the same
folder, then a rename, so an interrupted run never leaves a truncated file.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from octswap import __version__
from octswap.errors import CheckpointError, InputError, OctswapError, OutputExistsError, path_argument
from octswap.inference import InferenceOptions, inference_options, optimize_for_inference, unwrap_compiled
from octswap.models import ModelSource, apply_state_dict
from octswap.plan import Plan
from octswap.serialization import load_tensors
from octswap.rewrite import apply_plan

__all__ = ["FORMAT", "FORMAT_VERSION", "Checkpoint", "atomic_write", "load", "read", "save"]

logger = logging.getLogger(__name__)

FORMAT = "octswap-checkpoint"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """The contents of a checkpoint file, validated."""

    path: Path
    format_version: int
    octswap_version: str
    created: str
    source: ModelSource
    plan: Plan
    state_dict: dict[str, torch.Tensor]
    report: dict[str, Any] | None
    inference: InferenceOptions | None = None
    healing: dict[str, Any] | None = None
    training: dict[str, Any] | None = None

    def build_original(self) -> nn.Module:
        """The unconverted architecture, random init (for comparisons)."""
        return self.source.build().eval()


def atomic_write(path: str | Path, write: Any, *, force: bool = False, suffix: str = ".tmp") -> Path:
    """Write a file through ``write(tmp_path)``, then move it into place atomically.

    The temporary file is named ``.<name>.<random><suffix>`` beside ``path`` (a reader
    that goes by the file's suffix, such as ``torch.export.load``, needs its own).
    Without ``force`` an existing file is never replaced, even one that appears
    while writing (the final step is a hard link, which fails if the name exists).

    Raises:
        OutputExistsError: ``path`` exists and ``force`` is false.
        InputError: the folder does not exist or is not writable.
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists; pass --force to overwrite it")
    if path.is_dir():
        raise InputError(f"{path} is a directory")
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=folder)
    except OSError as err:
        raise InputError(f"cannot write to {folder}: {err.strerror or err}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the file the mode a plain open() would (0666 less the umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputExistsError(f"{path} exists; pass --force to overwrite it") from None
            except OSError:  # file systems without hard links: best effort
                if path.exists():
                    raise OutputExistsError(f"{path} exists; pass --force to overwrite it") from None
                os.replace(tmp, path)
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _plain(value: Any, where: str = "checkpoint") -> Any:
    """Builtin types only, so ``torch.load(weights_only=True)`` accepts the file.

    ``torch.__version__`` is a ``str`` subclass that the safe unpickler refuses.
    """
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (bool, int, float, str)):  # subclasses of builtins
        return type(value).__mro__[-2](value) if not isinstance(value, str) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: cannot store a {type(value).__name__} in a checkpoint")


def save(
    path: str | Path,
    model: nn.Module,
    plan: Plan,
    *,
    source: ModelSource,
    report: Mapping[str, Any] | None = None,
    healing: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write a converted model as an octswap checkpoint.

    Args:
        path: The file to write (atomically: a temporary file, then a rename).
        model: The converted model (as :func:`octswap.convert` returned it, trained or not).
        plan: The plan :func:`octswap.convert` returned with it; :func:`octswap.load` replays it.
        source: How to rebuild the original architecture: what :func:`octswap.load_model`
            returns beside the model, or ``octswap.ModelSource("torchvision", "resnet50")``,
            ``ModelSource("timm", "timm:resnet18")``, ``ModelSource("import", "pkg.mod:factory",
            kwargs={...})``. A ``"user"`` source (an in-memory model) saves, but loading it
            needs the original model passed to :func:`octswap.load`.
        report, healing, training: Summaries kept in the file beside the model (``report``:
            :meth:`Report.summary`; ``healing``, ``training``: what heal and training record);
            :func:`read` returns them on the :class:`Checkpoint`.
        force: Overwrite an existing file.

    Example:
        >>> model, source = octswap.load_model("resnet50")                         # doctest: +SKIP
        >>> converted, plan = octswap.convert(model, alpha=0.25)                 # doctest: +SKIP
        >>> octswap.save("resnet50-oct0.25.pt", converted, plan, source=source)  # doctest: +SKIP

    Raises:
        OutputExistsError: the file exists and ``force`` is false.
        InputError: the file cannot be written.
    """
    inference = inference_options(model)
    state = unwrap_compiled(model).state_dict()
    payload = _plain({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "octswap_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source.to_dict(),
        "plan": plan.to_dict(),
        "state_dict": state,
        # Per-module state-dict versions (BatchNorm, MNASNet...) that load_state_dict consults.
        "state_dict_metadata": dict(getattr(state, "_metadata", {}) or {}),
        "report": report,
        "inference": None if inference is None else inference.to_dict(),
        "healing": healing,
        "training": training,
    })
    return atomic_write(path, lambda tmp: torch.save(payload, tmp), force=force)


def _with_metadata(state: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None) -> dict[str, torch.Tensor]:
    result: OrderedDict[str, torch.Tensor] = OrderedDict(state)
    if metadata:
        result._metadata = OrderedDict((k, dict(v)) for k, v in metadata.items())  # type: ignore[attr-defined]
    return result


def read(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint without building the model.

    Raises:
        CheckpointError: missing, corrupt, foreign or too new.
        TypeError: ``path`` is not a path (``None``...).
    """
    path = path_argument(path, function="read_checkpoint", expected="an octswap checkpoint")
    data = load_tensors(path, what="checkpoint", error=CheckpointError,
                        instead="octswap checkpoints are written by `octswap convert` or octswap.save()")  # fmt: skip
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an octswap checkpoint (no '{FORMAT}' marker)")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}; this octswap ({__version__}) reads up to {FORMAT_VERSION}"
        )
    try:
        return Checkpoint(
            path=path,
            format_version=version,
            octswap_version=str(data.get("octswap_version")),
            created=str(data.get("created")),
            source=ModelSource.from_dict(data["source"]),
            plan=Plan.from_dict(data["plan"]),
            state_dict=_with_metadata(data["state_dict"], data.get("state_dict_metadata")),
            report=data.get("report"),
            inference=None if data.get("inference") is None else InferenceOptions.from_dict(data["inference"]),
            healing=data.get("healing"),
            training=data.get("training"),
        )
    except (KeyError, TypeError, ValueError, OctswapError) as err:
        raise CheckpointError(f"{path} is damaged: {type(err).__name__}: {err}") from None


def load(
    path: str | Path,
    *,
    model: nn.Module | None = None,
    allow_import: bool = False,
    compile: bool | None = None,
) -> nn.Module:
    """Rebuild a converted model from a checkpoint and load its weights strictly.

    Args:
        path: A file written by :func:`save`.
        model: The *unconverted* architecture to convert again (needed for models
            built in memory; optional otherwise). Its weights are replaced.
        allow_import: Let a checkpoint whose source is ``package.module:factory``
            import and call that factory. Off by default: a checkpoint should not
            run code merely by being loaded.
        compile: Wrap the model in ``torch.compile``; ``None`` (default) does so when
            the checkpoint was saved with ``compile`` in its inference options.

    Returns:
        The converted model, in eval mode, prepared for inference as it was saved
        (BatchNorm folded, channels-last) when the checkpoint records that.

    Example:
        >>> model = octswap.load("resnet50-oct0.25.pt")  # doctest: +SKIP
    """
    ckpt = read(path_argument(path, function="load", expected="an octswap checkpoint"))
    if model is None:
        if ckpt.source.kind == "import" and not allow_import:
            raise CheckpointError(
                f"{ckpt.path} builds its model with {ckpt.source.name!r}; pass allow_import=True "
                "(CLI: --allow-import) if you trust it, or pass the model"
            )
        try:
            model = ckpt.source.build()
        except OctswapError as err:
            raise CheckpointError(f"cannot rebuild the model of {ckpt.path}: {err}") from None
    try:
        model = apply_plan(model, ckpt.plan)
    except OctswapError as err:
        raise CheckpointError(f"cannot replay the plan of {ckpt.path}: {err}") from None
    options = ckpt.inference
    if options is not None:
        # Same structure as what was saved (folded BatchNorms, channels-last) before
        # the weights go in; compiling comes last, on the loaded weights.
        model = optimize_for_inference(model, replace(options, compile=False), inplace=True)
    try:
        apply_state_dict(model, ckpt.state_dict, what=f"checkpoint {ckpt.path}")
    except OctswapError as err:
        raise CheckpointError(str(err)) from None
    model.eval()
    if options is not None:
        model.octswap_inference = options
    if compile or (compile is None and options is not None and options.compile):
        return torch.compile(model)  # type: ignore[return-value]
    return model
