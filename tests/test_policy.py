"""Policy: validation messages, precedence, YAML and dict round trips."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from octswap.errors import PolicyError
from octswap.policy import Policy, Rule, load_policy

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def conv(name="layer1.0.conv1", cin=64, cout=64, k=3, stride=1, groups=1, out=(28, 28)):
    kind = "depthwise" if groups == cin and groups > 1 else "grouped" if groups > 1 else ("pointwise" if k == 1 else "regular")
    return SimpleNamespace(name=name, in_channels=cin, out_channels=cout, kernel_size=(k, k), stride=(stride, stride),
                           groups=groups, output_size=out, kind=kind)  # fmt: skip


# ----------------------------------------------------------------- precedence
def test_global_alpha_applies_without_rules():
    res = Policy(alpha=0.5).resolve(conv())
    assert (res.alpha_in, res.alpha_out, res.skip, res.rule_index) == (0.5, 0.5, False, None)


def test_name_beats_regex_beats_conditions_beats_global():
    policy = Policy.from_dict({
        "alpha": 0.1,
        "rules": [
            {"where": {"kernel_size": 3}, "alpha": 0.2},
            {"regex": r"^layer1\.", "alpha": 0.3},
            {"name": "layer1.0.conv1", "alpha": 0.4},
        ],
    })  # fmt: skip
    assert policy.resolve(conv("layer1.0.conv1")).alpha_in == 0.4
    assert policy.resolve(conv("layer1.0.conv2")).alpha_in == 0.3
    assert policy.resolve(conv("layer2.0.conv2")).alpha_in == 0.2
    assert policy.resolve(conv("layer2.0.conv2", k=1)).alpha_in == 0.1


def test_first_rule_wins_within_a_tier():
    policy = Policy(rules=(Rule(regex="conv", alpha=0.5), Rule(pattern="layer1.*", skip=True)))
    res = policy.resolve(conv("layer1.0.conv1"))
    assert res.alpha_in == 0.5 and res.rule_index == 0
    policy = Policy(rules=(Rule(pattern="layer1.*", skip=True), Rule(regex="conv", alpha=0.5)))
    assert policy.resolve(conv("layer1.0.conv1")).skip


def test_name_rule_with_conditions_needs_both():
    policy = Policy.from_dict({"rules": [{"name": "a.conv", "where": {"stride": 2}, "alpha": 0.5}]})
    assert policy.resolve(conv("a.conv", stride=2)).alpha_in == 0.5
    assert policy.resolve(conv("a.conv", stride=1)).alpha_in == 0.25  # falls back to global


def test_alpha_in_out_and_force():
    policy = Policy.from_dict({"alpha": 0.5, "rules": [{"regex": "x", "alpha_out": 0.0, "force": True}]})
    res = policy.resolve(conv("x"))
    assert (res.alpha_in, res.alpha_out, res.force) == (0.5, 0.0, True)


@pytest.mark.parametrize(
    "where,hit,miss",
    [
        ({"kernel_size": [1, 3]}, {"k": 3}, {"k": 5}),
        ({"stride": 2}, {"stride": 2}, {"stride": 1}),
        ({"groups": 32}, {"groups": 32, "cin": 128}, {"groups": 1}),
        ({"kind": "depthwise"}, {"groups": 64}, {"groups": 1}),
        ({"min_in_channels": 64, "max_in_channels": 128}, {"cin": 128}, {"cin": 256}),
        ({"min_out_channels": 65}, {"cout": 65}, {"cout": 64}),
        ({"max_feature_size": 14}, {"out": (14, 20)}, {"out": (15, 15)}),
        ({"min_feature_size": 8}, {"out": (8, 8)}, {"out": (7, 9)}),
    ],
)
def test_conditions(where, hit, miss):
    rule = Rule.from_dict({"where": where, "skip": True}, "r")
    assert rule.selects(conv(**hit))
    assert not rule.selects(conv(**miss))


def test_glob_pattern_matches_whole_name():
    rule = Rule(pattern="layer4.*", skip=True)
    assert rule.selects(conv("layer4.0.conv1"))
    assert not rule.selects(conv("x.layer4.0.conv1"))


# ----------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "data,message",
    [
        ({"alpah": 0.5}, "unknown key 'alpah' (did you mean 'alpha'?)"),
        ({"alpha": 1.0}, "alpha must be in [0, 1), got 1.0"),
        ({"alpha": -0.1}, "alpha must be in [0, 1)"),
        ({"alpha": "high"}, "alpha: expected a number in [0, 1), got 'high'"),
        ({"alpha": True}, "expected a number"),
        ({"min_channels": 1.5}, "min_channels: expected a whole number >= 0, got 1.5"),
        ({"rules": {"name": "x"}}, "rules: expected a list of rules"),
        ({"rules": [{"regex": "(", "alpha": 0.5}]}, "rules[0].regex: bad regex '('"),
        ({"rules": [{"name": "x", "alpha": 0.5, "skp": True}]}, "rules[0]: unknown key 'skp' (did you mean 'skip'?)"),
        ({"rules": [{"alpha": 0.5}]}, "rules[0]: a rule needs a selector"),
        ({"rules": [{"name": "x"}]}, "rules[0]: a rule needs an action"),
        ({"rules": [{"name": "x", "regex": "y", "skip": True}]}, "only one of 'name', 'pattern' and 'regex'"),
        ({"rules": [{"name": "x", "skip": True, "alpha": 0.5}]}, "'skip: true' cannot be combined"),
        ({"rules": [{"name": "x", "alpha": 0.5, "alpha_in": 0.5}]}, "either 'alpha' or 'alpha_in'"),
        ({"rules": [{"name": "x", "alpha_out": 1.5}]}, "rules[0].alpha_out: alpha must be in [0, 1), got 1.5"),
        ({"rules": [{"where": {"kernal_size": 3}, "skip": True}]}, "rules[0].where: unknown key 'kernal_size' (did you mean 'kernel_size'?)"),
        ({"rules": [{"where": {"kind": "sparse"}, "skip": True}]}, "rules[0].where.kind: expected one of"),
        ({"rules": [{"where": {"stride": []}, "skip": True}]}, "rules[0].where.stride"),
        ({"rules": [{"name": "", "skip": True}]}, "rules[0].name: expected a non-empty string"),
        ({"rules": [{"name": "x", "skip": True, "force": True}]}, "'force' applies to rules that set an alpha"),
        ({"version": 2}, "unsupported policy version 2"),
        ({"channel_multiple": 0}, "channel_multiple: expected a whole number >= 1, got 0"),
        ({"channel_multiple": 16.0}, "channel_multiple: expected a whole number >= 1, got 16.0"),
        ({"channel_multipel": 16}, "unknown key 'channel_multipel' (did you mean 'channel_multiple'?)"),
        ([1, 2], "expected a mapping at the top level"),
    ],
)
def test_validation_names_key_and_value(data, message):
    with pytest.raises(PolicyError) as info:
        Policy.from_dict(data)
    assert message in str(info.value)


def test_yaml_syntax_error_has_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("alpha: 0.5\nrules:\n  - name: [unclosed\n")
    with pytest.raises(PolicyError, match=r"invalid YAML at line \d+"):
        load_policy(path)


def test_missing_file():
    with pytest.raises(PolicyError, match="policy file not found"):
        load_policy("/nonexistent/policy.yaml")


def test_errors_from_a_file_name_the_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("alpha: 2\n")
    with pytest.raises(PolicyError, match=f"policy {path}: alpha"):
        load_policy(path)


def test_empty_file_is_the_default_policy(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_policy(path) == Policy()


# ----------------------------------------------------------------- round trips
POLICIES = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("zoo-"))  # zoo-*: manifests


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path):
    policy = load_policy(path)
    assert Policy.from_dict(policy.to_dict()) == policy
    assert Policy.from_yaml(policy.to_yaml()) == policy


alphas = st.sampled_from([0.0, 0.125, 0.25, 0.375, 0.5, 0.75])
rules = st.builds(
    lambda sel, value, action, where: Rule.from_dict({sel: value, **action, **({"where": where} if where else {})}, "r"),
    st.sampled_from(["name", "pattern", "regex"]),
    st.from_regex(r"[a-z][a-z0-9.]{0,8}", fullmatch=True),
    st.one_of(st.builds(lambda a: {"alpha": a}, alphas), st.just({"skip": True}),
              st.builds(lambda a, b: {"alpha_in": a, "alpha_out": b}, alphas, alphas)),
    st.one_of(st.none(), st.fixed_dictionaries({}, optional={"kernel_size": st.sampled_from([1, 3, [1, 3]]),
                                                             "min_in_channels": st.integers(1, 512),
                                                             "kind": st.sampled_from(["pointwise", "grouped"])})),
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(alpha=alphas, min_channels=st.integers(0, 64), min_feature_size=st.integers(0, 32), rules=st.lists(rules, max_size=4),
       multiple=st.sampled_from([1, 8, 16]))
def test_dict_round_trip(alpha, min_channels, min_feature_size, rules, multiple):
    policy = Policy(alpha=alpha, min_channels=min_channels, min_feature_size=min_feature_size, rules=tuple(rules),
                    channel_multiple=multiple)
    assert Policy.from_dict(policy.to_dict()) == policy
    assert Policy.from_yaml(policy.to_yaml()) == policy


def test_with_alpha_keeps_rules():
    policy = load_policy(CONFIGS / "resnet.yaml").with_alpha(0.125)
    assert policy.alpha == 0.125 and len(policy.rules) == 2
    with pytest.raises(PolicyError, match="alpha must be in"):
        policy.with_alpha(1.5)


def test_channel_multiple_from_yaml_and_override():
    policy = Policy.from_yaml("alpha: 0.375\nchannel_multiple: 16\n")
    assert policy.channel_multiple == 16
    assert Policy().channel_multiple == 1  # default: floor(alpha * c), as before the option
    assert policy.with_channel_multiple(8).channel_multiple == 8
    assert policy.with_alpha(0.5).channel_multiple == 16
    with pytest.raises(PolicyError, match="channel_multiple: expected a whole number >= 1"):
        policy.with_channel_multiple(0)
