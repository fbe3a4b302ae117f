"""The policy file ``octswap tune`` writes: a policy ``convert --policy`` takes unchanged, with
the measured figures as comments (one rule per conv, grouped by unit)."""

from __future__ import annotations

import yaml

from octswap.tuning.result import TuneResult

__all__ = ["policy_yaml"]


def _flow(data: dict[str, object]) -> str:
    return yaml.safe_dump(data, default_flow_style=True, sort_keys=False, width=10_000).strip()


def _saving(result: TuneResult, saving: float) -> str:
    if result.objective == "flops":
        return f"saves {saving / 1e6:.1f} M multiply-adds per image alone"
    return f"saves {saving * 1e3:.2f} ms per batch alone (predicted)"


def policy_yaml(result: TuneResult, *, model: str) -> str:
    """``result.policy`` as YAML, headed by what was measured and how.

    Example:
        >>> text = policy_yaml(result, model="resnet50")               # doctest: +SKIP
        >>> Policy.from_yaml(text) == result.policy                    # doctest: +SKIP
        True
    """
    target = "" if result.target is None else f" {result.target}"
    lines = [f"# octswap tune {model}: objective {result.objective}{target}, {result.plan.mode} mode"]
    lines += [f"# {line}" for line in result.summary()]
    lines.append("# Convs of one unit meet (add, multiply, shared conv): they share one alpha.")
    data = result.policy.to_dict()
    rules = data.pop("rules")
    lines.append(yaml.safe_dump(data, sort_keys=False).rstrip())
    if not rules:
        lines.append("rules: []")
        return "\n".join(lines) + "\n"
    lines.append("rules:")
    tuned = 0
    for choice in result.units:
        figures = f", {_saving(result, choice.saving)}" if choice.alpha else ""
        if choice.alpha and result.drop_kind == "agreement points":
            figures += f", {choice.drop:.2f} points of agreement lost alone"
        lines.append(f"  # unit {choice.unit.name} ({len(choice.unit.convs)} conv{'s' * (len(choice.unit.convs) > 1)}):"
                     f" alpha {choice.alpha}{figures}")
        for _ in choice.unit.convs:
            lines.append(f"  - {_flow(rules[tuned])}")
            tuned += 1
    if tuned < len(rules):
        lines.append("  # the rules of the policy tuned from")
        lines += [f"  - {_flow(rule)}" for rule in rules[tuned:]]
    return "\n".join(lines) + "\n"
