"""ONNX files: written with the ``torch.onnx`` dynamo exporter, run with ONNX Runtime.

onnx, onnxscript and onnxruntime are the optional extra ``octswap[export]``; without
them, :func:`require_onnx` raises one clear error naming it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from octswap.errors import ConversionError, MissingExtraError
from octswap.export.rewrites import NCHWC_BLOCK
from octswap.layers import OctaveConv2d

__all__ = [
    "NCHWC_BLOCK",
    "misaligned_octave_convs",
    "onnxruntime_session",
    "require_onnx",
    "run_onnx",
    "runtime_name",
    "write_onnx",
]

logger = logging.getLogger(__name__)

_EXTRA = ("onnx", "onnxscript", "onnxruntime")



def require_onnx(*modules: str) -> None:
    """Import the export extra's modules (all three by default), or raise one clear error.

    Raises:
        MissingExtraError: one of them is not installed.
    """
    import importlib

    for name in modules or _EXTRA:
        try:
            importlib.import_module(name)
        except ImportError:
            raise MissingExtraError(
                f"ONNX export needs {name}, which is not installed: pip install 'octswap[export]'"
            ) from None


@contextlib.contextmanager
def _quiet_exporter() -> Any:
    """The exporter prints progress lines ("[torch.onnx] Obtain model graph...") to
    stdout and warns about its own internals; octswap's stdout carries results only."""
    noisy = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir", "torch.export", "torch._export")]
    levels = [log.level for log in noisy]
    for log in noisy:
        log.setLevel(logging.ERROR)
    captured = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(noisy, levels):
            log.setLevel(level)
        if captured.getvalue().strip():
            logger.debug("torch.onnx: %s", captured.getvalue().strip())


def write_onnx(
    model: nn.Module,
    example: Tensor,
    path: Path,
    *,
    dynamic_axes: Mapping[int, str],
    opset: int | None,
    metadata: Mapping[str, str],
    rewrite: bool = True,
) -> dict[str, Any]:
    """Export ``model`` at ``example`` to ``path`` (overwritten) and return facts about the file.

    Args:
        model: The reference model (eval, BatchNorm folded).
        example: An ``N x C x H x W`` input.
        path: Where to write (the caller makes it atomic).
        dynamic_axes: Input axes to keep dynamic and their names (``{0: "batch"}``).
        opset: ONNX opset (default: the exporter's).
        metadata: Written to the model's ``metadata_props``.
        rewrite: Apply :mod:`octswap.export.rewrites` (ONNX Runtime fusions).
    """
    require_onnx("onnx", "onnxscript")
    from onnxscript import ir

    from octswap.export.rewrites import rewrite_for_onnxruntime

    misaligned = misaligned_octave_convs(model)
    if misaligned:
        logger.warning(
            "%d octave conv(s) (%s%s) have a branch whose channel count is not a multiple of %d; ONNX Runtime's CPU "
            "provider runs them outside its blocked layout, which can make the model slower than the original "
            "there (convert with --channel-multiple %d, or channel_multiple: %d in the policy, to avoid it)",
            len(misaligned), ", ".join(misaligned[:3]), ", ..." if len(misaligned) > 3 else "", NCHWC_BLOCK,
            NCHWC_BLOCK, NCHWC_BLOCK,
        )  # fmt: skip
    shapes = (dict(dynamic_axes),) if dynamic_axes else None
    with _quiet_exporter():
        program = torch.onnx.export(
            model, (example,), dynamo=True, dynamic_shapes=shapes, opset_version=opset, input_names=["input"],
            optimize=True, verbose=False, external_data=False,
        )  # fmt: skip
    assert program is not None
    onnx_model = program.model
    rewrites = rewrite_for_onnxruntime(onnx_model) if rewrite else 0
    onnx_model.metadata_props.update(metadata)
    size = sum(v.const_value.nbytes for v in onnx_model.graph.initializers.values() if v.const_value is not None)
    if size >= 2**31:
        raise ConversionError(f"the weights take {size / 2**30:.1f} GiB; ONNX files over 2 GiB need external data "
                              "files, which octswap export does not write (use --format pt2)")  # fmt: skip
    ir.save(onnx_model, path)
    opset_used = onnx_model.opset_imports.get("", None)
    return {"opset": opset_used, "rewrites": rewrites, "nodes": sum(1 for _ in onnx_model.graph)}


def _runs_blocked(out_channels: int, in_channels: int, groups: int, block: int) -> bool:
    """Whether ONNX Runtime's NCHWc transformer takes a conv with these channel counts
    (``in_channels`` per group, as in the weight's shape)."""
    if groups > 1:
        depthwise = in_channels == 1 and out_channels == groups
        per_group = out_channels // groups
        return out_channels % block == 0 and (depthwise or (in_channels % block == 0 and per_group % block == 0))
    return in_channels < block or in_channels % block == 0  # output channels are padded to the block


def misaligned_octave_convs(model: nn.Module, *, block: int = NCHWC_BLOCK) -> list[str]:
    """Names of octave convs with a path conv that ONNX Runtime's NCHWc transformer leaves
    in the plain layout because of its channel counts, where the original conv's channel
    counts would have run blocked (``nchwc_transformer.cc``: input channels a multiple of
    ``block`` or fewer than it; grouped convs also output channels).

    Example:
        >>> net = nn.Sequential(OctaveConv2d(64, 64, 3, alpha_in=0.125, alpha_out=0.125, padding=1))
        >>> misaligned_octave_convs(net)
        ['0']
    """
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, OctaveConv2d) or module._plain:
            continue
        groups = module.groups
        if not _runs_blocked(module.out_channels, module.in_channels // groups, groups, block):
            continue  # the original is no faster there
        paths = [getattr(module, p) for p in ("h2h", "h2l", "l2h", "l2l")]
        shapes = [(*path.weight.shape[:2], path.groups) for path in paths if path is not None]
        if not all(_runs_blocked(out, cin, g, block) for out, cin, g in shapes):
            names.append(name)
    return names


def runtime_name(device: str = "cpu") -> str:
    import onnxruntime

    provider = "CUDAExecutionProvider" if device.startswith("cuda") else "CPUExecutionProvider"
    return f"ONNX Runtime {onnxruntime.__version__} ({provider})"


def onnxruntime_session(
    path: str | Path,
    *,
    threads: int | None = None,
    device: str = "cpu",
    fixed_dims: Mapping[str, int] | None = None,
    profile: str | Path | None = None,
    optimized_to: str | Path | None = None,
) -> Any:
    """An ``onnxruntime.InferenceSession`` with all graph optimizations, sequential execution,
    ``threads`` intra-op threads (default: ONNX Runtime's), one inter-op thread, and no
    spinning: by default ONNX Runtime's idle workers spin waiting for work, and sessions timed
    in turn (as :func:`octswap.latency.side_by_side` times them) then take each other's cores
    (a 3x3 depthwise conv timed against a copy of itself, 20 ms rounds, 2 threads, this
    project's VM: 7.9 and 6.1 ms per run with spinning, 4.1 and 4.4 without, 3.5 alone).

    ``fixed_dims`` fixes named dynamic dimensions for this session (ONNX Runtime's free
    dimension overrides, e.g. ``{"batch": 8}``): the file stays dynamic, the session plans
    for one shape, as a server that always runs one batch size would. ``profile`` turns on
    ONNX Runtime's profiler with that file prefix (``session.end_profiling()`` writes the
    JSON trace and returns its name). ``optimized_to`` writes the graph as optimized for
    this session (node names as its profile gives them).
    """
    require_onnx("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: its warnings are about its own optimizer
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for name, value in (fixed_dims or {}).items():
        options.add_free_dimension_override_by_name(name, value)
    if optimized_to is not None:
        options.optimized_model_filepath = str(optimized_to)
    if profile is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile)
    providers = ["CUDAExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers)


def run_onnx(path: str | Path, *, threads: int | None = None) -> Callable[[Tensor], list[Tensor]]:
    """A function that runs one input through the file with ONNX Runtime (CPU)."""
    session = onnxruntime_session(path, threads=threads)
    name = session.get_inputs()[0].name

    def run(x: Tensor) -> list[Tensor]:
        return [torch.from_numpy(out) for out in session.run(None, {name: x.numpy()})]

    return run
