"""A self-contained octave replacement for one conv: tensor in, tensor out."""

from __future__ import annotations

from torch import Tensor, nn

from octswap.layers.conv import OctaveConv2d
from octswap.layers.resample import merge_frequencies, split_frequencies

__all__ = ["OctaveConvBlock"]


class OctaveConvBlock(nn.Module):
    """A self-contained octave replacement for one conv: tensor in, tensor out.

    Splits its input (when ``alpha_in`` gives low channels), applies an
    :class:`OctaveConv2d` and merges the pair back in the original channel order
    (when ``alpha_out`` does), so it drops into any model where the conv was.
    This is octswap's layer-wise conversion unit.

    Example:
        >>> import torch
        >>> block = OctaveConvBlock.from_conv(nn.Conv2d(32, 64, 3, padding=1), alpha_in=0.5, alpha_out=0.5)
        >>> tuple(block(torch.randn(2, 32, 15, 15)).shape)
        (2, 64, 15, 15)
    """

    def __init__(self, conv: OctaveConv2d) -> None:
        super().__init__()
        self.conv = conv

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        *,
        alpha_in: float,
        alpha_out: float,
        in_low: int | None = None,
        out_low: int | None = None,
    ) -> OctaveConvBlock:
        """Replace ``conv`` by split -> octave conv -> merge, with its weights.

        ``in_low``/``out_low`` set the low channel counts (default: from the alphas, as
        :func:`low_channels` with no rounding).
        """
        return cls(OctaveConv2d.from_conv(conv, alpha_in=alpha_in, alpha_out=alpha_out, in_low=in_low, out_low=out_low))

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(split_frequencies(x, self.conv.in_low) if self.conv.in_low else x)
        return merge_frequencies(*y) if self.conv.out_low else y
