"""Timing under ONNX Runtime for ``octswap tune --runtime onnxruntime``.

A conv and its octave replacement are each exported once (``torch.onnx``'s dynamo exporter
with octswap's ONNX Runtime rewrites, as ``octswap export`` writes whole models) into a
folder that lives as long as the timer, and timed side by side in sessions set up as
``octswap bench --runtime onnxruntime`` sets them up (all graph optimizations, sequential,
the given intra-op threads). Inside the original a conv's time is not observable per node
without mapping ONNX nodes back to modules, so the original's per-conv times are the plain
convs timed alone, and the original's time outside convs is its whole time under ONNX
Runtime less their sum.

A conv alone converts its input into ONNX Runtime's blocked layout (NCHWc) and its output
back; between convs in a whole model it does neither. Those conversions took 22-60% of an
isolated MobileNetV2 conv's time (batch 8, 2 threads, this project's VM: a 3x3 depthwise
conv at 56x56, 3.4 of 5.7 ms), in different shares for a plain conv and its octave
replacement: timed whole they predicted savings the model did not have (mobilenet_v2, every
unit at its best alpha: predicted 0.83, measured 1.11). Each timed file's share of kernel
time in those edge conversions is measured once with ONNX Runtime's profiler, and its
seconds are scaled by the rest (:meth:`OnnxTimer.in_context_share`).

Example:
    >>> timer = OnnxTimer(threads=2, rounds=5)                                  # doctest: +SKIP
    >>> timer.side_by_side([(conv, (x,)), (octave_pair, (high, low))])          # doctest: +SKIP
    [0.0012, 0.0009]
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from octswap.latency import session_forward, session_run, side_by_side

__all__ = ["OnnxTimer"]


class _Inputs(nn.Module):
    """A module taking its inputs as separate arguments (an octave pair becomes two inputs)."""

    def __init__(self, module: nn.Module, pair: bool) -> None:
        super().__init__()
        self.module = module
        self.pair = pair

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.module(tuple(inputs) if self.pair else inputs[0])


class OnnxTimer:
    """Exports modules to ONNX and times them in ONNX Runtime (CPU or CUDA provider).

    Args:
        threads: Intra-op threads of each session (and of the timing loop).
        device: ``"cpu"`` or ``"cuda"``.
        rounds: Alternating rounds per measurement.
        min_round_time: Seconds per round.

    Raises:
        MissingExtraError: onnx, onnxscript or onnxruntime is missing (``octswap[export]``).
    """

    def __init__(self, *, threads: int, device: str = "cpu", rounds: int = 5, min_round_time: float = 0.02) -> None:
        from octswap.export.onnx_file import require_onnx

        require_onnx()
        self.threads = threads
        self.device = device
        self.rounds = rounds
        self.min_round_time = min_round_time
        self._folder = tempfile.TemporaryDirectory(prefix="octswap-tune-onnx-")
        self._files: dict[str, Path] = {}
        self._shares: dict[Path, float] = {}

    def close(self) -> None:
        """Remove the exported files."""
        self._folder.cleanup()

    def _export(self, key: str, module: nn.Module, inputs: Sequence[torch.Tensor]) -> Path:
        """``module`` exported at ``inputs`` (shapes fixed), once per ``key``."""
        if key in self._files:
            return self._files[key]
        from onnxscript import ir

        from octswap.export.onnx_file import _quiet_exporter
        from octswap.export.rewrites import rewrite_for_onnxruntime

        wrapped = _Inputs(module.eval(), pair=len(inputs) > 1)
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(wrapped, tuple(inputs), dynamo=True, optimize=True, verbose=False,
                                        external_data=False)  # fmt: skip
        assert program is not None
        rewrite_for_onnxruntime(program.model)
        path = Path(self._folder.name) / f"{len(self._files)}.onnx"
        ir.save(program.model, path)
        self._files[key] = path
        return path

    def side_by_side(self, items: Sequence[tuple[str, nn.Module, Sequence[torch.Tensor]]]) -> list[float]:
        """Median seconds per run of each ``(key, module, inputs)``, timed in alternating rounds.

        ``key`` names what is exported (a module with the same key is exported once).
        """
        from octswap.export.onnx_file import onnxruntime_session

        forwards, shares = [], []
        for key, module, inputs in items:
            path = self._export(key, module, inputs)
            session = onnxruntime_session(path, threads=self.threads, device=self.device)
            feed = {i.name: x.detach().cpu().numpy() for i, x in zip(session.get_inputs(), inputs)}
            forwards.append(session_run(session, feed))
            shares.append(self.in_context_share(path, feed))
        timings = side_by_side(forwards, self.threads, rounds=self.rounds, min_round_time=self.min_round_time)
        return [t.median * share for t, share in zip(timings, shares)]

    def in_context_share(self, path: Path, feed: dict[str, Any], runs: int = 20) -> float:
        """Share of ``path``'s kernel time (ONNX Runtime's profiler, each node's median over
        ``runs`` runs on ``feed``) not spent converting the graph's own inputs into the blocked
        layout or its outputs out of it: what the same ops cost between other convs. Cached
        per file; 1 on CUDA."""
        if self.device.startswith("cuda"):
            return 1.0
        if path not in self._shares:
            self._shares[path] = _in_context_share(path, feed, threads=self.threads, runs=runs)
        return self._shares[path]

    def whole(self, model: nn.Module, input_shape: tuple[int, int, int], batch: int) -> float:
        """Median seconds per forward of ``model`` at ``batch`` (exported as ``octswap export`` does)."""
        from octswap.export import export_model
        from octswap.export.onnx_file import onnxruntime_session

        path = Path(self._folder.name) / f"whole-{len(self._files)}.onnx"
        export_model(model, path, input_shape=input_shape, force=True)
        self._files[str(path)] = path
        fixed = {"batch": batch, "height": input_shape[1], "width": input_shape[2]}
        session = onnxruntime_session(path, threads=self.threads, device=self.device, fixed_dims=fixed)
        forward = session_forward(session, torch.randn(batch, *input_shape).numpy())
        return side_by_side([forward], self.threads, rounds=self.rounds, min_round_time=0.2)[0].median


def _edge_reorders(optimized: Path) -> set[str]:
    """Names of the nodes of an optimized graph that convert a graph input into the blocked
    layout or a graph output out of it."""
    import onnx

    graph = onnx.load(str(optimized)).graph
    inputs, outputs = {i.name for i in graph.input}, {o.name for o in graph.output}
    return {n.name for n in graph.node
            if (n.op_type == "ReorderInput" and n.input[0] in inputs)
            or (n.op_type == "ReorderOutput" and n.output[0] in outputs)}  # fmt: skip


def _in_context_share(path: Path, feed: dict[str, Any], *, threads: int, runs: int) -> float:
    import json

    from octswap.export.onnx_file import onnxruntime_session

    optimized = path.with_suffix(".optimized.onnx")
    session = onnxruntime_session(path, threads=threads, profile=path.with_suffix(""), optimized_to=optimized)
    edges = _edge_reorders(optimized)
    for _ in range(runs):
        session.run(None, feed)
    trace = Path(session.end_profiling())
    durations: dict[str, list[float]] = {}
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            durations.setdefault(event["name"][: -len("_kernel_time")], []).append(event["dur"])
    trace.unlink()
    typical = {name: statistics.median(values) for name, values in durations.items()}  # a slow run is noise
    total = sum(typical.values())
    edge = sum(seconds for name, seconds in typical.items() if name in edges)
    return 1.0 - edge / total if total > 0 else 1.0
