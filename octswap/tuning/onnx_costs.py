"""Timing under ONNX Runtime for ``octswap tune --runtime onnxruntime``.

A conv and its octave replacement are each exported once (``torch.onnx``'s dynamo exporter
with octswap's ONNX Runtime rewrites, as ``octswap export`` writes whole models) into a
folder that lives as long as the timer, and timed side by side in sessions set up as
``octswap bench --runtime onnxruntime`` sets them up (all graph optimizations, sequential,
the given intra-op threads). Inside the original a conv's time is not observable per node
without mapping ONNX nodes back to modules, so the original's per-conv times are the plain
convs timed alone (:meth:`OnnxTimer.plain`), and the original's time outside convs is its
whole time under ONNX Runtime less their sum.

Example:
    >>> timer = OnnxTimer(threads=2, rounds=5)                                  # doctest: +SKIP
    >>> timer.side_by_side([(conv, (x,)), (octave_pair, (high, low))])          # doctest: +SKIP
    [0.0012, 0.0009]
"""

from __future__ import annotations

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

        forwards = []
        for key, module, inputs in items:
            session = onnxruntime_session(self._export(key, module, inputs), threads=self.threads, device=self.device)
            feed = {i.name: x.detach().cpu().numpy() for i, x in zip(session.get_inputs(), inputs)}
            forwards.append(session_run(session, feed))
        timings = side_by_side(forwards, self.threads, rounds=self.rounds, min_round_time=self.min_round_time)
        return [t.median for t in timings]

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
