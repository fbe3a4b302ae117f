"""``octswap tune``: choose which convs convert, at which alpha, by measuring this machine.

:mod:`~octswap.tuning.space` (units of convs that share a split, cheap re-planning),
:mod:`~octswap.tuning.costs` (per-conv latency measured here, multiply-adds),
:mod:`~octswap.tuning.search` (the knapsack over units), :mod:`~octswap.tuning.tuner`
(the run: costs, search, whole-model check), :mod:`~octswap.tuning.cache`
(measurements kept across runs), :mod:`~octswap.tuning.policy_file` (the YAML it writes).
"""

from octswap.tuning.objectives import TuneInterrupted
from octswap.tuning.tuner import DEFAULT_ALPHAS, TuneResult, UnitChoice, tune

__all__ = ["DEFAULT_ALPHAS", "TuneInterrupted", "TuneResult", "UnitChoice", "tune"]
