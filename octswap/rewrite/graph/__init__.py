"""Graph mode: keep (high, low) pairs flowing from conv to conv, as the paper's networks do.

The model is traced with ``torch.fx``. One forward pass over the graph gives every
tensor a *state*: plain, or a pair with a channel :class:`Layout`. Convs the plan
converts produce pairs; BatchNorm is split per branch; activations, dropout and
pooling run per branch (the low branch's pooling lands on ``ceil(high / 2)`` at every
input size: :mod:`octswap.layers.pooling`); residual ``add``/``mul`` and channel ``cat`` combine pairs;
global average pooling pools each branch and concatenates (the official SE block).
Where a pair meets anything else (flatten, attention, channel shuffle, a kept conv,
the output) a merge is inserted: upsample the low branch, concatenate, restore the
original channel order. A conv whose input is plain becomes a "first" octave conv
(``alpha_in = 0``); a conv that receives a pair but whose plan says no octave output
becomes a "last" one (``alpha_out = 0``).

Each per-op rule is a small handler in a registry keyed by module type, function or
method name (like fvcore's op-handle table): :mod:`~octswap.rewrite.graph.passes` holds
the pass, :mod:`~octswap.rewrite.graph.handler_registry` the handler table,
:mod:`~octswap.rewrite.graph.handlers` the handlers, one op family per module,
:mod:`~octswap.rewrite.graph.planning` the two uses of the pass.
"""

from __future__ import annotations

from octswap.layers import merge_ordered, pooled_merge, split_ordered, stochastic_depth_pair, take_channels
from octswap.rewrite.graph.handler_registry import register
from octswap.rewrite.graph.layout import Layout
from octswap.rewrite.graph.passes import ORIGIN
from octswap.rewrite.graph.planning import plan_graph, rewrite_graph
from octswap.rewrite.graph.tracing import trace

__all__ = [
    "ORIGIN",
    "Layout",
    "merge_ordered",
    "plan_graph",
    "pooled_merge",
    "register",
    "rewrite_graph",
    "split_ordered",
    "stochastic_depth_pair",
    "take_channels",
    "trace",
]
