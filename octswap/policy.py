"""Conversion policy: which convs become octave convs, and at which alpha.

Modelled on ``torch.ao.quantization.QConfigMapping``. A policy has a global
``alpha`` and an ordered list of rules. Each rule selects convs and sets their
alpha (or skips them). Rules fall into tiers by how they select; a higher tier
wins, and within a tier the *first* matching rule in file order wins:

====  ==========================================  =======================
tier  selector                                    example
====  ==========================================  =======================
0     global ``alpha``                            ``alpha: 0.25``
1     conditions only (``where``)                 ``where: {kernel_size: 1}``
2     name pattern (``pattern`` glob or ``regex``)  ``regex: '^layer4\\.'``
3     exact module name (``name``)                ``name: layer4.0.conv1``
====  ==========================================  =======================

A name rule may also carry ``where`` conditions; it then matches only convs that
satisfy both. ``skip: true`` keeps a conv plain. Independently of alpha, convs
with fewer than ``min_channels`` channels (stems) or an output map smaller than
``min_feature_size`` stay plain unless the deciding rule says ``force: true``.
``channel_multiple: 16`` rounds every split to multiples of 16 channels on both
branches, the block size of ONNX Runtime's fast CPU convs (see
:func:`octswap.octave.low_channels`).

Example:
    >>> policy = Policy.from_dict({
    ...     "alpha": 0.5,
    ...     "rules": [{"regex": r"^layer4\\.", "skip": True},
    ...               {"where": {"kernel_size": 1}, "alpha": 0.25}],
    ... })
    >>> Policy.from_dict(policy.to_dict()) == policy
    True
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from octswap.config_checks import ConfigChecks
from octswap.errors import PolicyError, path_argument

__all__ = ["Conditions", "Policy", "Resolution", "Rule", "load_policy"]

POLICY_VERSION = 1
DEFAULT_ALPHA = 0.25
DEFAULT_MIN_CHANNELS = 16
DEFAULT_MIN_FEATURE_SIZE = 8
KINDS = ("regular", "pointwise", "depthwise", "grouped")


class ConvLike(Protocol):
    """What a rule can look at: :class:`octswap.plan.ConvSite` satisfies it."""

    name: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    output_size: tuple[int, int] | None

    @property
    def kind(self) -> str: ...


# ----------------------------------------------------------------- validation
_CHECKS = ConfigChecks(PolicyError, "policy: {where}: {message}", bare="policy: {message}", list_keys=True)
_fail = _CHECKS.fail
_check_keys = _CHECKS.check_keys


def _alpha(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(where, f"expected a number in [0, 1), got {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise _fail(where, f"alpha must be in [0, 1), got {value!r}")
    return float(value)


def _int(value: Any, where: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(where, f"expected a whole number >= {minimum}, got {value!r}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, f"expected true or false, got {value!r}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(where, f"expected a non-empty string, got {value!r}")
    return value


def _int_set(value: Any, where: str) -> tuple[int, ...]:
    """One int or a list of ints (any of them matches)."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise _fail(where, "expected a whole number or a non-empty list of them, got []")
    return tuple(_int(v, where, minimum=1) for v in values)


# ------------------------------------------------------------------ model
@dataclass(frozen=True)
class Conditions:
    """Type and shape conditions on a conv; every condition given must hold.

    ``kernel_size``, ``stride`` and ``groups`` take one value or a list (any of
    them). Square values compare against both dimensions. Feature-map bounds
    apply to the smaller side of the conv's *output* map at the probe size.
    """

    kernel_size: tuple[int, ...] | None = None
    stride: tuple[int, ...] | None = None
    groups: tuple[int, ...] | None = None
    kind: str | None = None
    min_in_channels: int | None = None
    max_in_channels: int | None = None
    min_out_channels: int | None = None
    max_out_channels: int | None = None
    min_feature_size: int | None = None
    max_feature_size: int | None = None

    _SETS = ("kernel_size", "stride", "groups")
    _BOUNDS = ("min_in_channels", "max_in_channels", "min_out_channels", "max_out_channels",
               "min_feature_size", "max_feature_size")  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Conditions:
        if not isinstance(data, Mapping) or not data:
            raise _fail(where, f"expected a mapping of conditions, got {data!r}")
        keys = tuple(f.name for f in dataclasses.fields(cls))
        _check_keys(data, keys, where)
        values: dict[str, Any] = {}
        for key, value in data.items():
            at = f"{where}.{key}"
            if key in cls._SETS:
                values[key] = _int_set(value, at)
            elif key == "kind":
                if value not in KINDS:
                    raise _fail(at, f"expected one of {', '.join(KINDS)}, got {value!r}")
                values[key] = value
            else:
                values[key] = _int(value, at)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = (value[0] if len(value) == 1 else list(value)) if f.name in self._SETS else value
        return out

    def matches(self, conv: ConvLike) -> bool:
        def square_in(pair: tuple[int, int], allowed: tuple[int, ...] | None) -> bool:
            return allowed is None or (pair[0] == pair[1] and pair[0] in allowed)

        if not square_in(conv.kernel_size, self.kernel_size) or not square_in(conv.stride, self.stride):
            return False
        if self.groups is not None and conv.groups not in self.groups:
            return False
        if self.kind is not None and conv.kind != self.kind:
            return False
        feature = min(conv.output_size) if conv.output_size else None
        checks = (
            (conv.in_channels, self.min_in_channels, self.max_in_channels),
            (conv.out_channels, self.min_out_channels, self.max_out_channels),
            (feature, self.min_feature_size, self.max_feature_size),
        )
        for value, low, high in checks:
            if (low is not None or high is not None) and value is None:
                return False
            if low is not None and value < low:  # type: ignore[operator]
                return False
            if high is not None and value > high:  # type: ignore[operator]
                return False
        return True


_RULE_KEYS = ("name", "pattern", "regex", "where", "alpha", "alpha_in", "alpha_out", "skip", "force")


@dataclass(frozen=True)
class Rule:
    """One policy rule: a selector and an action. See the module docstring for precedence."""

    name: str | None = None
    pattern: str | None = None
    regex: str | None = None
    where: Conditions | None = None
    alpha: float | None = None
    alpha_in: float | None = None
    alpha_out: float | None = None
    skip: bool = False
    force: bool = False
    _compiled: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.regex is not None:
            try:
                object.__setattr__(self, "_compiled", re.compile(self.regex))
            except re.error as err:
                raise PolicyError(f"policy: bad regex {self.regex!r}: {err}") from None
        elif self.pattern is not None:
            object.__setattr__(self, "_compiled", re.compile(fnmatch.translate(self.pattern)))

    @property
    def tier(self) -> int:
        if self.name is not None:
            return 3
        if self.pattern is not None or self.regex is not None:
            return 2
        return 1

    @property
    def selector(self) -> str:
        """A short human description, e.g. ``regex '^layer4\\.'``."""
        parts = []
        for key in ("name", "pattern", "regex"):
            if getattr(self, key) is not None:
                parts.append(f"{key} '{getattr(self, key)}'")
        if self.where is not None:
            parts.append("where " + ", ".join(f"{k}={v}" for k, v in self.where.to_dict().items()))
        return " ".join(parts)

    def selects(self, conv: ConvLike) -> bool:
        if self.name is not None and conv.name != self.name:
            return False
        if self._compiled is not None:
            hit = self._compiled.search(conv.name) if self.regex is not None else self._compiled.match(conv.name)
            if not hit:
                return False
        return self.where is None or self.where.matches(conv)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Rule:
        if not isinstance(data, Mapping):
            raise _fail(where, f"expected a mapping, got {data!r}")
        _check_keys(data, _RULE_KEYS, where)
        values: dict[str, Any] = {}
        for key in ("name", "pattern", "regex"):
            if key in data:
                values[key] = _str(data[key], f"{where}.{key}")
        if len([k for k in ("name", "pattern", "regex") if k in values]) > 1:
            raise _fail(where, "use only one of 'name', 'pattern' and 'regex'")
        if "where" in data:
            values["where"] = Conditions.from_dict(data["where"], f"{where}.where")
        if not values:
            raise _fail(where, "a rule needs a selector: 'name', 'pattern', 'regex' or 'where'")
        for key in ("alpha", "alpha_in", "alpha_out"):
            if key in data:
                values[key] = _alpha(data[key], f"{where}.{key}")
        for key in ("skip", "force"):
            if key in data:
                values[key] = _bool(data[key], f"{where}.{key}")
        sets_alpha = any(k in values for k in ("alpha", "alpha_in", "alpha_out"))
        if "alpha" in values and ("alpha_in" in values or "alpha_out" in values):
            raise _fail(where, "give either 'alpha' or 'alpha_in'/'alpha_out', not both")
        if values.get("skip") and sets_alpha:
            raise _fail(where, "'skip: true' cannot be combined with an alpha")
        if not values.get("skip") and not sets_alpha:
            raise _fail(where, "a rule needs an action: 'alpha', 'alpha_in'/'alpha_out' or 'skip: true'")
        if values.get("skip") and values.get("force"):
            raise _fail(where, "'force' applies to rules that set an alpha, not to 'skip'")
        try:
            return cls(**values)
        except PolicyError as err:  # only a bad regex can fail here
            raise _fail(f"{where}.regex", str(err).removeprefix("policy: ")) from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("name", "pattern", "regex"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.where is not None:
            out["where"] = self.where.to_dict()
        for key in ("alpha", "alpha_in", "alpha_out"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.skip:
            out["skip"] = True
        if self.force:
            out["force"] = True
        return out


@dataclass(frozen=True)
class Resolution:
    """What the policy says about one conv, and which part of it said so."""

    alpha_in: float
    alpha_out: float
    skip: bool
    force: bool
    source: str
    rule_index: int | None


_POLICY_KEYS = ("version", "alpha", "min_channels", "min_feature_size", "channel_multiple", "rules")


@dataclass(frozen=True)
class Policy:
    """Global alpha, automatic guards and ordered rules.

    Args:
        alpha: Low-frequency ratio for every selected conv not set by a rule.
        min_channels: Convs with fewer input or output channels stay plain (stems).
        min_feature_size: Convs whose output map is smaller than this (either side)
            stay plain: a 3x3 conv on a 3.5x3.5 low-frequency map makes no sense.
        rules: Ordered rules; see the module docstring for precedence.
        channel_multiple: Round each conv's low and high channel counts to multiples of
            this (nearest to alpha; see :func:`octswap.octave.low_channels`). 1 keeps
            ``floor(alpha * c)``; 16 suits ONNX Runtime's CPU convs, which run blocked
            layouts only on multiples of 16 channels (8 on AVX2 machines).
    """

    alpha: float = DEFAULT_ALPHA
    min_channels: int = DEFAULT_MIN_CHANNELS
    min_feature_size: int = DEFAULT_MIN_FEATURE_SIZE
    rules: tuple[Rule, ...] = ()
    channel_multiple: int = 1

    def __post_init__(self) -> None:
        _alpha(self.alpha, "alpha")
        _int(self.channel_multiple, "channel_multiple", minimum=1)
        object.__setattr__(self, "rules", tuple(self.rules))

    # -------------------------------------------------------------- conversion
    @classmethod
    def from_dict(cls, data: Any) -> Policy:
        """Validate and build a policy from plain data (as loaded from YAML).

        Raises:
            PolicyError: naming the offending key and value.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise _fail("", f"expected a mapping at the top level, got {type(data).__name__}")
        _check_keys(data, _POLICY_KEYS, "")
        if "version" in data and data["version"] != POLICY_VERSION:
            raise _fail("version", f"unsupported policy version {data['version']!r} (this octswap reads {POLICY_VERSION})")
        values: dict[str, Any] = {}
        if "alpha" in data:
            values["alpha"] = _alpha(data["alpha"], "alpha")
        for key in ("min_channels", "min_feature_size"):
            if key in data:
                values[key] = _int(data[key], key)
        if "channel_multiple" in data:
            values["channel_multiple"] = _int(data["channel_multiple"], "channel_multiple", minimum=1)
        rules = data.get("rules", [])
        if rules is None:
            rules = []
        if not isinstance(rules, list):
            raise _fail("rules", f"expected a list of rules, got {rules!r}")
        values["rules"] = tuple(Rule.from_dict(r, f"rules[{i}]") for i, r in enumerate(rules))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`from_dict` turns back into an equal policy."""
        return {
            "version": POLICY_VERSION,
            "alpha": self.alpha,
            "min_channels": self.min_channels,
            "min_feature_size": self.min_feature_size,
            "channel_multiple": self.channel_multiple,
            "rules": [rule.to_dict() for rule in self.rules],
        }

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "<string>") -> Policy:
        """Parse YAML text into a policy."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark is not None else ""
            raise PolicyError(f"policy {source}: invalid YAML{at}: {getattr(err, 'problem', err)}") from None
        try:
            return cls.from_dict(data)
        except PolicyError as err:
            raise PolicyError(str(err).replace("policy:", f"policy {source}:", 1)) from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_alpha(self, alpha: float) -> Policy:
        """A copy with a new global alpha (rules keep their own)."""
        return dataclasses.replace(self, alpha=_alpha(alpha, "alpha"))

    def with_channel_multiple(self, multiple: int) -> Policy:
        """A copy that rounds channel splits to multiples of ``multiple`` (1: no rounding)."""
        return dataclasses.replace(self, channel_multiple=_int(multiple, "channel_multiple", minimum=1))

    # -------------------------------------------------------------- resolution
    def resolve(self, conv: ConvLike) -> Resolution:
        """Decide alpha for one conv: highest tier wins, then first rule in order.

        Example:
            >>> from types import SimpleNamespace as C
            >>> conv = C(name="layer4.0.conv1", in_channels=64, out_channels=64, kernel_size=(1, 1),
            ...          stride=(1, 1), groups=1, output_size=(14, 14), kind="pointwise")
            >>> Policy(alpha=0.5, rules=(Rule(regex="^layer4", alpha=0.0),)).resolve(conv).alpha_out
            0.0
        """
        best: tuple[int, Rule] | None = None
        for index, rule in enumerate(self.rules):
            if rule.selects(conv) and (best is None or rule.tier > best[1].tier):
                best = (index, rule)
        if best is None:
            return Resolution(self.alpha, self.alpha, False, False, f"global alpha {self.alpha}", None)
        index, rule = best
        source = f"rules[{index}] ({rule.selector})"
        if rule.skip:
            return Resolution(0.0, 0.0, True, False, source, index)
        base = rule.alpha if rule.alpha is not None else self.alpha
        alpha_in = rule.alpha_in if rule.alpha_in is not None else base
        alpha_out = rule.alpha_out if rule.alpha_out is not None else base
        return Resolution(alpha_in, alpha_out, False, rule.force, source, index)


def load_policy(path: str | Path) -> Policy:
    """Read a YAML policy file.

    Example:
        >>> policy = load_policy("configs/resnet.yaml")  # doctest: +SKIP

    Raises:
        PolicyError: the file is missing, unreadable or invalid.
        TypeError: ``path`` is not a path, e.g. ``None``: without a policy file, pass
            ``alpha=`` or a :class:`Policy` to :func:`octswap.convert` instead.
    """
    path = path_argument(path, function="load_policy", expected="a YAML policy file (for no file, use Policy(alpha=...))")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"policy file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PolicyError(f"cannot read policy file {path}: {err}") from None
    return Policy.from_yaml(text, source=str(path))
