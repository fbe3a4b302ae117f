"""What ``octswap tune`` is asked for: the target checked before any work, and the policy
adjusted for the runtime it is timed in."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from octswap.errors import InputError
from octswap.latency import RUNTIMES, check_device
from octswap.policy import Policy

__all__ = ["Goal", "check_goal", "make_goal", "runtime_policy"]

logger = logging.getLogger(__name__)


def check_goal(target_latency: float | None, target_flops: float | None, max_drop: float | None,
               alphas: Sequence[float], data: Any, device: str = "cpu", runtime: str = "pytorch") -> None:  # fmt: skip
    """Refuse bad targets, alphas, device or runtime before any work.

    Raises:
        InputError: which, and why.
        MissingExtraError: ``runtime="onnxruntime"`` without the export extra.
    """
    check_device(device)
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}: choose from {', '.join(RUNTIMES)}")
    if runtime != "pytorch" and target_flops is not None:
        raise InputError("--target-flops times nothing, so --runtime does not apply; drop one of them")
    if runtime == "onnxruntime":
        from octswap.export.onnx_file import require_onnx

        require_onnx()
    if target_latency is not None and target_flops is not None:
        raise InputError("give one target: --target-latency or --target-flops, not both")
    for flag, value in (("--target-latency", target_latency), ("--target-flops", target_flops)):
        if value is not None and not (isinstance(value, (int, float)) and 0 < value < 1):
            raise InputError(f"{flag} must be a ratio of the original in (0, 1), got {value}")
    if max_drop is not None:
        if data is None:
            raise InputError("--max-drop needs --data (the agreement it bounds is measured on it)")
        if target_latency is not None or target_flops is not None:
            raise InputError("--max-drop is an objective of its own: give it or a target, not both")
        if not max_drop >= 0:
            raise InputError(f"--max-drop is in points of agreement, at least 0; got {max_drop}")
    if not alphas or any(not 0 < a < 1 for a in alphas):
        raise InputError(f"candidate alphas must be in (0, 1), got {list(alphas)}")


@dataclass(frozen=True)
class Goal:
    """What the search is asked for: ``objective`` fastest | latency | flops | max-drop."""

    objective: str
    target: float | None = None
    tolerance: float = 0.02


def make_goal(target_latency: float | None, target_flops: float | None, max_drop: float | None, tolerance: float) -> Goal:
    """The goal the first given target sets (none: the fastest policy)."""
    for objective, target in (("latency", target_latency), ("flops", target_flops), ("max-drop", max_drop)):
        if target is not None:
            return Goal(objective, target, tolerance)
    return Goal("fastest", None, tolerance)


def runtime_policy(policy: Policy, runtime: str, device: str) -> tuple[Policy, list[str]]:
    """Under ONNX Runtime on the CPU, splits rounded to its NCHWc block unless the policy
    asks for a channel multiple of its own: a branch off the block runs in the plain
    layout with reorders around it, which one conv timed alone does not show (measured on
    mobilenet_v2, batch 8, 2 threads: uniform alpha 0.5 at 1.37 of the original's time
    with splits to the channel, 0.99 with multiples of 16)."""
    from octswap.export.onnx_file import NCHWC_BLOCK

    if runtime != "onnxruntime" or torch.device(device).type != "cpu" or policy.channel_multiple != 1:
        return policy, []
    note = (f"splits rounded to multiples of {NCHWC_BLOCK} channels (ONNX Runtime's blocked layout; "
            "--channel-multiple N for another)")  # fmt: skip
    logger.info(note)
    return policy.with_channel_multiple(NCHWC_BLOCK), [note]
