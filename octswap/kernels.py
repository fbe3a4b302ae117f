"""Old home of the oneDNN inference kernels, kept for the documented ``octswap.kernels`` path.

They live in :mod:`octswap.layers.kernels` (state included: ``fused_kernels`` here and
there switch the same kernels).
"""

from __future__ import annotations

from octswap.layers.kernels import *  # noqa: F403  (its public names, as before)
from octswap.layers.kernels import __all__ as __all__
