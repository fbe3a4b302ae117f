"""Channel layouts of octave pairs: which original channels each branch carries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Layout", "inverse"]


@dataclass(frozen=True)
class Layout:
    """Which original channels are high- and which low-frequency, in pair order."""

    high: tuple[int, ...]
    low: tuple[int, ...]

    @classmethod
    def standard(cls, channels: int, low: int) -> Layout:
        return cls(tuple(range(channels - low)), tuple(range(channels - low, channels)))

    @property
    def channels(self) -> int:
        return len(self.high) + len(self.low)

    @property
    def is_standard(self) -> bool:
        return self == Layout.standard(self.channels, len(self.low))

    @property
    def order(self) -> tuple[int, ...]:
        """The original channel at each position of ``[high; low]``."""
        return self.high + self.low

    @staticmethod
    def concat(parts: Sequence[Layout | int]) -> Layout:
        """Layout of a channel ``cat``; an int stands for a plain part of that many channels."""
        high: list[int] = []
        low: list[int] = []
        offset = 0
        for part in parts:
            if isinstance(part, int):
                high.extend(range(offset, offset + part))
                offset += part
            else:
                high.extend(offset + c for c in part.high)
                low.extend(offset + c for c in part.low)
                offset += part.channels
        return Layout(tuple(high), tuple(low))


def inverse(order: Sequence[int]) -> tuple[int, ...]:
    """The permutation that undoes ``order`` (original channel -> position)."""
    result = [0] * len(order)
    for position, channel in enumerate(order):
        result[channel] = position
    return tuple(result)
