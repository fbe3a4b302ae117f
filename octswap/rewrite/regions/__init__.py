"""Graph mode region by region, for models that do not trace with ``torch.fx`` as a whole.

:mod:`~octswap.rewrite.regions.discovery` finds the regions (the largest submodules that
trace as the probe called them), :mod:`~octswap.rewrite.regions.rewriter` plans and
rewrites them as the ``regions`` mode.
"""

from __future__ import annotations

from octswap.rewrite.regions.discovery import Region, find_regions
from octswap.rewrite.regions.rewriter import plan_regions, rewrite_regions

__all__ = ["Region", "find_regions", "plan_regions", "rewrite_regions"]
