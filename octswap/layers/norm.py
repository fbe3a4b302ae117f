"""Channel-by-channel modules for a (high, low) pair: each branch gets its own slice.

:class:`OctaveBatchNorm2d` splits a trained ``BatchNorm2d``; :class:`OctaveChannelwise`
splits any module that acts channel by channel (a norm with its activation, a frozen
BatchNorm...); :func:`split_group_norm` splits a ``GroupNorm`` whose groups each lie in
one branch.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from octswap.layers.split import OctaveInput

__all__ = ["OctaveBatchNorm2d", "OctaveChannelwise", "split_group_norm"]


class OctaveBatchNorm2d(nn.Module):
    """Per-branch BatchNorm for a (high, low) pair, sliced from a trained ``BatchNorm2d``.

    Example:
        >>> bn = OctaveBatchNorm2d.from_bn(nn.BatchNorm2d(64).eval(), low=16)
        >>> h, l = bn((torch.randn(1, 48, 8, 8), torch.randn(1, 16, 4, 4)))
    """

    def __init__(
        self,
        num_features: int,
        *,
        low: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= low < num_features:
            raise ValueError(f"low={low} must be in [0, {num_features})")
        kwargs = dict(eps=eps, momentum=momentum, affine=affine, track_running_stats=track_running_stats,
                      device=device, dtype=dtype)  # fmt: skip
        self.num_features = num_features
        self.low = low
        self.bn_h = nn.BatchNorm2d(num_features - low, **kwargs)
        self.bn_l = nn.BatchNorm2d(low, **kwargs) if low else None

    @classmethod
    def from_bn(cls, bn: nn.BatchNorm2d, *, low: int, order: Sequence[int] | None = None) -> OctaveBatchNorm2d:
        """Split ``bn`` into a high part (first channels) and a low part (last ``low`` channels).

        ``order`` gives the original channel at each position of ``[high; low]`` when
        the pair is not in the original channel order.
        """
        ref = bn.weight if bn.weight is not None else bn.running_mean
        octave = cls(
            bn.num_features, low=low, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
            track_running_stats=bn.track_running_stats,
            device=None if ref is None else ref.device, dtype=None if ref is None else ref.dtype,
        )  # fmt: skip
        high = bn.num_features - low
        index = list(order) if order is not None else list(range(bn.num_features))
        with torch.no_grad():
            for part, rows in ((octave.bn_h, index[:high]), (octave.bn_l, index[high:])):
                if part is None:
                    continue
                for name in ("weight", "bias", "running_mean", "running_var"):
                    src, dst = getattr(bn, name), getattr(part, name)
                    if src is not None and dst is not None:
                        dst.copy_(src[rows])
                if bn.num_batches_tracked is not None and part.num_batches_tracked is not None:
                    part.num_batches_tracked.copy_(bn.num_batches_tracked)
        octave.train(bn.training)
        return octave

    def forward(self, x: OctaveInput) -> OctaveInput:
        if self.bn_l is None:
            if not isinstance(x, Tensor):
                raise TypeError("OctaveBatchNorm2d with low=0 expects a tensor")
            return self.bn_h(x)
        if isinstance(x, Tensor):
            raise TypeError(f"OctaveBatchNorm2d(low={self.low}) expects a (high, low) pair")
        return self.bn_h(x[0]), self.bn_l(x[1])

    def extra_repr(self) -> str:
        return f"{self.num_features} ({self.num_features - self.low}h+{self.low}l)"


class OctaveChannelwise(nn.Module):
    """A module that acts channel by channel (a norm with its activation, a frozen BatchNorm...)
    applied to each branch of a pair: two copies of it, their per-channel parameters and
    buffers sliced to the branch's channels.

    Example:
        >>> norm_act = nn.Sequential(nn.BatchNorm2d(8), nn.PReLU(8)).eval()
        >>> split = OctaveChannelwise.from_module(norm_act, channels=8, high=range(6), low=range(6, 8))
        >>> h, l = split((torch.randn(1, 6, 4, 4), torch.randn(1, 2, 2, 2)))
    """

    def __init__(self, high: nn.Module, low: nn.Module) -> None:
        super().__init__()
        self.high = high
        self.low = low

    @classmethod
    def from_module(cls, module: nn.Module, *, channels: int, high: Sequence[int], low: Sequence[int]) -> OctaveChannelwise:
        """Copies of ``module`` for channels ``high`` and ``low`` (indices into its ``channels``).

        Every parameter and buffer whose first dimension is ``channels`` is sliced; a
        ``num_features`` attribute equal to ``channels`` follows.
        """
        return cls(_channel_slice(module, channels, list(high)), _channel_slice(module, channels, list(low)))

    def forward(self, x: OctaveInput) -> OctaveInput:
        if isinstance(x, Tensor):
            raise TypeError("OctaveChannelwise expects a (high, low) pair")
        return self.high(x[0]), self.low(x[1])


def _channel_slice(module: nn.Module, channels: int, index: list[int]) -> nn.Module:
    part = copy.deepcopy(module)
    rows = torch.tensor(index, dtype=torch.long)
    with torch.no_grad():
        for sub in part.modules():
            for name, param in list(sub.named_parameters(recurse=False)):
                if param.ndim >= 1 and param.shape[0] == channels:
                    setattr(sub, name, nn.Parameter(param[rows.to(param.device)].clone(), requires_grad=param.requires_grad))
            for name, buffer in list(sub.named_buffers(recurse=False)):
                if buffer.ndim >= 1 and buffer.shape[0] == channels:
                    sub._buffers[name] = buffer[rows.to(buffer.device)].clone()
            if getattr(sub, "num_features", None) == channels:
                sub.num_features = len(index)
    return part


def split_group_norm(gn: nn.GroupNorm, *, low: int) -> OctaveChannelwise:
    """A ``GroupNorm`` for a pair whose last ``low`` channels are the low branch, each
    group lying in one branch: the high branch keeps the first groups, the low branch the
    last ``low / group size``, each normalised over its own branch's positions.

    A low-branch pixel stands for the 2x2 pixels of the map the pair represents (nearest
    upsampling, Chen et al. 2019), so a group's mean and variance over the low map are
    those over the merged map at even sizes (at odd sizes the cropped last row and column
    count once instead of twice): per branch, the norm sees what it saw on the merged map.

    Raises:
        ValueError: ``low`` is not a whole number of groups, or not in ``[1, channels)``.

    Example:
        >>> split = split_group_norm(nn.GroupNorm(8, 32), low=16)
        >>> h, l = split((torch.randn(1, 16, 8, 8), torch.randn(1, 16, 4, 4)))
    """
    size = gn.num_channels // gn.num_groups
    if not 0 < low < gn.num_channels or low % size:
        raise ValueError(f"low={low} must be a whole number of groups of {size} in (0, {gn.num_channels})")
    parts = []
    for first, count in ((0, gn.num_channels - low), (gn.num_channels - low, low)):
        part = nn.GroupNorm(count // size, count, eps=gn.eps, affine=gn.affine)
        if gn.affine:
            with torch.no_grad():
                part.weight.copy_(gn.weight[first : first + count])
                part.bias.copy_(gn.bias[first : first + count])
            part.to(gn.weight.device, gn.weight.dtype)
        parts.append(part.train(gn.training))
    return OctaveChannelwise(parts[0], parts[1])
