"""Graph-mode handlers, one op family per module; importing this package registers them."""

from __future__ import annotations

from octswap.rewrite.graph.handlers import activation, arithmetic, concat, conv, norm, pooling, resize, shape

__all__ = ["activation", "arithmetic", "concat", "conv", "norm", "pooling", "resize", "shape"]
