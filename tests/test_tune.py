"""octswap tune: units, the search against brute force, policies that round-trip, cached measurements."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import octswap
from octswap.cli import app
from octswap.errors import InputError, OutputExistsError
from octswap.flops import count_cost
from octswap.layers import OctaveConv2d
from octswap.layers.resample import split_frequencies
from octswap.plan import ConvSite, example_input
from octswap.policy import Policy
from octswap.tuning import TuneInterrupted, tune
from octswap.tuning.policy_file import policy_yaml
from octswap.tuning.search import (Option, coordinate_descent, fewest_drop_reaching, most_saving_within,
                                   pareto_front)
from octswap.tuning.space import SearchSpace, octave_macs
from tests.nets import UnitsNet, bars, branching_segmenter, trained_tiny

SHAPE = (3, 32, 32)


def _units(space):
    return sorted(sorted(u.convs) for u in space.units)


def test_units_join_convs_whose_outputs_meet_and_only_those():
    space = SearchSpace(UnitsNet(), policy=Policy(), input_shape=SHAPE)
    assert space.mode == "graph"
    assert _units(space) == sorted(sorted(u) for u in UnitsNet.UNITS)
    # One alpha per unit: the residual stage keeps one split, so no boundary is inserted there.
    plan = space.plan_for({u.name: 0.5 for u in space.units})
    assert not [b for b in plan.boundaries if b["before"].startswith(("add", "b2", "proj"))]


def test_units_inside_graph_regions():
    space = SearchSpace(branching_segmenter(), policy=Policy(), input_shape=SHAPE)
    assert space.mode == "regions"
    units = _units(space)
    for stage in ("encoder.stage1", "encoder.stage2"):
        assert [f"{stage}.conv2", f"{stage}.shortcut"] in units
    assert sorted(c for u in units for c in u) == sorted(space.candidates)


def _lows(layers):
    return [(d.name, d.action, d.in_low, d.out_low) for d in layers]


@pytest.mark.parametrize("build", [UnitsNet, branching_segmenter])
def test_replanning_without_tracing_gives_the_plan_convert_makes(build):
    space = SearchSpace(build(), policy=Policy(), input_shape=SHAPE)
    rng = random.Random(0)
    for _ in range(3):
        assignment = {u.name: rng.choice([0.0, 0.125, 0.25, 0.5, 0.75]) for u in space.units}
        assert _lows(space.decisions_for(assignment)) == _lows(space.plan_for(assignment).layers)


@pytest.mark.parametrize(("cin", "cout", "k", "stride", "groups", "size", "in_low", "out_low"), [
    (32, 48, 3, 1, 1, (13, 9), 8, 12),
    (32, 32, 3, 2, 1, (14, 14), 8, 16),
    (32, 32, 3, 2, 1, (15, 15), 0, 16),
    (32, 32, 3, 1, 1, (15, 15), 8, 0),
    (32, 32, 3, 1, 32, (10, 10), 8, 16),
    (32, 32, 1, 1, 4, (9, 9), 16, 8),
])  # fmt: skip
def test_octave_macs_equal_fvcore_on_the_built_conv(cin, cout, k, stride, groups, size, in_low, out_low):
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups)
    x = torch.randn(1, cin, *size)
    out_size = tuple(conv(x).shape[-2:])
    site = ConvSite("c", "Conv2d", cin, cout, (k, k), (stride, stride), (k // 2, k // 2), (1, 1), groups, True,
                    "zeros", size, out_size, 1)  # fmt: skip
    octave = OctaveConv2d.from_conv(conv, in_low=in_low, out_low=out_low)
    inputs = (split_frequencies(x, in_low),) if in_low else (x,)
    assert octave_macs(site, in_low, out_low) == count_cost(octave, inputs).by_operator["conv"]
    assert site.macs == count_cost(conv, x).by_operator["conv"]


def _random_options(rng, units=4, choices=3):
    table = {}
    for u in range(units):
        opts = [Option(0.0, 0.0, 0.0)]
        for a in range(1, choices):
            opts.append(Option(a / choices, round(rng.uniform(-1, 5), 3), round(rng.uniform(0, 3), 3)))
        table[f"u{u}"] = opts
    return table


def _brute_force(table):
    points = []
    for combo in itertools.product(*table.values()):
        points.append((sum(o.saving for o in combo), sum(o.drop for o in combo),
                       {u: o.alpha for u, o in zip(table, combo)}))  # fmt: skip
    return points


@pytest.mark.parametrize("seed", range(6))
def test_the_knapsack_search_agrees_with_brute_force(seed):
    rng = random.Random(seed)
    table = _random_options(rng)
    every = _brute_force(table)
    front = pareto_front(table)
    # The front is exactly the non-dominated set of all policies.
    dominated = {i for i, p in enumerate(every) for q in every
                 if q[0] >= p[0] and q[1] <= p[1] and (q[0] > p[0] or q[1] < p[1])}  # fmt: skip
    expected = sorted({(round(p[0], 9), round(p[1], 9)) for i, p in enumerate(every) if i not in dominated})
    assert sorted((round(p.saving, 9), round(p.drop, 9)) for p in front) == expected
    for need in (0.5, 3.0, 7.5, 12.0):
        reaching = [p for p in every if p[0] >= need - 1e-12]
        got = fewest_drop_reaching(front, need)
        if not reaching:
            assert got is None
            continue
        assert got is not None and got.drop == pytest.approx(min(p[1] for p in reaching))
        saving, drop = (sum(o.saving for u, opts in table.items() for o in opts if o.alpha == got.assignment[u]),
                        sum(o.drop for u, opts in table.items() for o in opts if o.alpha == got.assignment[u]))
        assert (saving, drop) == (pytest.approx(got.saving), pytest.approx(got.drop))  # the assignment is the point
    for budget in (0.0, 1.0, 4.0):
        best = most_saving_within(front, budget)
        assert best.saving == pytest.approx(max(p[0] for p in every if p[1] <= budget + 1e-12))


def test_coordinate_descent_reaches_the_minimum_of_a_separable_cost():
    rng = random.Random(3)
    table = _random_options(rng, units=5, choices=4)
    grid = {u: [o.alpha for o in opts] for u, opts in table.items()}

    def cost(assignment):
        return -sum(o.saving for u, opts in table.items() for o in opts if o.alpha == assignment.get(u, 0.0))

    best = min(cost(dict(zip(table, combo))) for combo in itertools.product(*grid.values()))
    assert cost(coordinate_descent({}, grid, cost)) == pytest.approx(best)


def test_a_flops_target_gives_a_policy_convert_takes_unchanged(tmp_path):
    model = UnitsNet().eval()
    result = tune(model, input_shape=SHAPE, target_flops=0.7, alphas=(0.25, 0.5))
    assert result.measured_ratio is None and result.objective == "flops"
    x = example_input(SHAPE)
    assert result.flops_ratio <= 0.7 + 0.01
    text = policy_yaml(result, model="units_net")
    converted, plan = octswap.convert(model, Policy.from_yaml(text), input_shape=SHAPE)
    assert _lows(plan.layers) == _lows(result.plan.layers)
    assert count_cost(converted, x).flops / count_cost(model, x).flops == pytest.approx(result.flops_ratio)
    # Each unit's convs share the alpha chosen for it.
    alphas = {r.name: r.alpha for r in Policy.from_yaml(text).rules}
    for choice in result.units:
        assert {alphas[c] for c in choice.unit.convs} == {choice.alpha}


def test_a_target_no_policy_reaches_names_the_closest():
    with pytest.raises(InputError, match=r"no policy reaches a FLOPs ratio of 0.05.*closest found is predicted at 0\.\d+"):
        tune(UnitsNet(), input_shape=SHAPE, target_flops=0.05, alphas=(0.25,))


@pytest.mark.parametrize("kwargs", [{"target_latency": 0}, {"target_latency": 1.2}, {"target_flops": -1},
                                    {"target_latency": 0.5, "target_flops": 0.5}, {"alphas": (0.5, 1.0)}])  # fmt: skip
def test_bad_targets_are_refused(kwargs):
    with pytest.raises(InputError):
        tune(UnitsNet(), input_shape=SHAPE, **kwargs)


def test_measurements_survive_an_interruption_and_are_not_made_again(tmp_path):
    cache = tmp_path / "m.json"
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 6

    common = dict(input_shape=SHAPE, alphas=(0.5,), batch=2, threads=1, rounds=1, round_time=0.05, cache=cache)
    with pytest.raises(TuneInterrupted):
        tune(UnitsNet(), stop=stop, **common)
    first = set(json.loads(cache.read_text())["entries"])
    assert len(first) >= 2  # the original and some convs
    with pytest.raises(OutputExistsError):
        tune(UnitsNet(), **common)
    with pytest.raises(InputError, match="measured with batch=2"):
        tune(UnitsNet(), resume=True, **{**common, "batch": 4})
    result = tune(UnitsNet(), resume=True, **common)
    final = set(json.loads(cache.read_text())["entries"])
    assert first <= final
    assert len(final) == len(first) + result.measurements  # nothing measured twice
    assert result.reused >= len(first)
    assert result.measured_ratio is not None and result.measured_ratio < 1 or not any(c.alpha for c in result.units)


@pytest.fixture(scope="module")
def digits_like():
    x, y = bars(96, seed=7)
    model = trained_tiny(x, y, steps=80)
    loader = [(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)]
    return model, loader


def _agreement_by_hand(original, converted, loader):
    same = total = 0
    with torch.no_grad():
        for inputs, _ in loader:
            same += int((original(inputs).argmax(1) == converted.eval()(inputs).argmax(1)).sum())
            total += len(inputs)
    return same / total


def test_a_units_drop_is_the_agreement_it_costs_after_batchnorm_re_estimation(digits_like):
    from octswap.tuning.accuracy import AgreementTable
    from octswap.tuning.cache import MeasurementCache

    model, loader = digits_like
    space = SearchSpace(model, policy=Policy(), input_shape=(3, 16, 16))
    table = AgreementTable(model, space, data=loader, cache=MeasurementCache(None, {}, resume=False),
                           calibrate_batches=3)  # fmt: skip
    unit = space.units[0]
    converted, _ = octswap.convert(model, space.policy_for({unit.name: 0.5}), input_shape=(3, 16, 16))
    octswap.recalibrate_batchnorm(converted, loader, batches=3)
    expected = 100 * (1 - _agreement_by_hand(model, converted, loader))
    assert table.drop(unit.name, 0.5) == pytest.approx(expected)
    assert table.drop(unit.name, 0.0) == 0.0 and table.measured == 1


def test_equal_measured_drops_are_told_apart_by_how_much_changes(digits_like):
    """Units that measure the same drop (0 on a few hundred samples) must not look free to convert:
    the change proxy, scaled far below a measurement's resolution, breaks the tie."""
    from octswap.tuning.objectives import TIE_BREAK, Objectives

    class Flat:  # every unit measures no drop at all
        def drop(self, unit, alpha):
            return 0.0

    model, _ = digits_like
    space = SearchSpace(model, policy=Policy(), input_shape=(3, 16, 16))
    objectives = Objectives(space, None, Flat(), None)
    big = max(space.units, key=lambda u: u.macs)
    small = min(space.units, key=lambda u: u.macs)
    assert 0 < objectives.drop(small, 0.25) < objectives.drop(small, 0.5) < objectives.drop(big, 0.5) <= TIE_BREAK
    assert objectives.drop(big, 0.5) == pytest.approx(TIE_BREAK * 0.5 * big.macs / sum(u.macs for u in space.units))


def test_max_drop_keeps_the_measured_agreement_within_the_budget(digits_like):
    model, loader = digits_like
    result = tune(model, input_shape=(3, 16, 16), data=loader, max_drop=2.0, calibrate_batches=3, alphas=(0.25, 0.5),
                  batch=2, threads=1, rounds=1, round_time=0.05)  # fmt: skip
    assert result.drop_kind == "agreement points" and result.objective == "max-drop"
    converted, _ = octswap.convert(model, result.policy, input_shape=(3, 16, 16))
    octswap.recalibrate_batchnorm(converted, loader, batches=3)
    assert 100 * (1 - _agreement_by_hand(model, converted, loader)) <= 2.0
    assert result.agreement == pytest.approx(_agreement_by_hand(model, converted, loader))


def test_max_drop_needs_data():
    with pytest.raises(InputError, match="--max-drop needs --data"):
        tune(UnitsNet(), input_shape=SHAPE, max_drop=1.0)


# ------------------------------------------------------------------ command line
UNITS_NET = "tests.nets:units_net"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_writes_a_policy_and_json(workdir):
    result = _run("tune", UNITS_NET, "-s", "32", "--target-flops", "0.7", "--alphas", "0.25,0.5", "-f", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["objective"] == "flops" and data["flops_ratio"] <= 0.71 and data["policy_file"] == "units_net-tuned.yaml"
    assert sorted(sorted(u["convs"]) for u in data["units"]) == sorted(sorted(u) for u in UnitsNet.UNITS)
    policy = octswap.load_policy(workdir / "units_net-tuned.yaml")
    assert Policy.from_dict(data["policy"]) == policy
    assert policy.alpha == 0.0  # only the convs the tuner chose convert, at any size
    assert "convert with: octswap convert tests.nets:units_net -s 32 --policy units_net-tuned.yaml" in result.stderr
    again = _run("tune", UNITS_NET, "-s", "32", "--target-flops", "0.7")
    assert again.exit_code == 2 and "exists; pass --force" in again.stderr and "--resume" not in again.stderr
    resumed = _run("tune", UNITS_NET, "-s", "32", "--target-flops", "0.7", "--resume")
    assert resumed.exit_code == 2 and "pass --force to overwrite it (with --resume the measurements are kept)" in resumed.stderr
    assert len(resumed.stderr.strip().splitlines()) == 1


def test_uniform_alphas_beside_the_curve(workdir):
    result = _run("tune", UNITS_NET, "-s", "32", "--target-flops", "0.7", "--alphas", "0.25,0.5", "-f", "json",
                  "--plot", "t.png", "--plot", "t.svg")  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    uniform = data["uniform"]
    assert [u["alpha"] for u in uniform] == [0.25, 0.5]
    # Without data the drop is alpha x the unit's share of the units' MACs: every unit at alpha adds up to alpha.
    assert [u["drop"] for u in uniform] == pytest.approx([0.25, 0.5])
    assert 1 > uniform[0]["predicted_ratio"] > uniform[1]["predicted_ratio"] > 0 and len(data["curve"]) <= 24
    # The curve's end (every unit at its largest alpha) is the uniform 0.5 policy.
    assert min(r for r, _ in data["curve"]) == pytest.approx(uniform[1]["predicted_ratio"])
    assert (workdir / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (workdir / "t.svg").read_text()
    assert "wrote the trade-off plot: t.png, t.svg" in result.stderr
    table = _run("tune", UNITS_NET, "-s", "32", "--target-flops", "0.7", "--alphas", "0.25,0.5", "--force")
    assert table.exit_code == 0 and "uniform alpha 0.25" in table.stdout and "chosen" in table.stdout


def test_a_plot_needs_matplotlib_and_a_known_format(workdir, monkeypatch):
    bad = _run("tune", UNITS_NET, "-s", "32", "--target-flops", "0.7", "--plot", "t.xyz")
    assert bad.exit_code == 2 and "--plot t.xyz: give a file ending in one of" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and list(workdir.iterdir()) == []
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    missing = _run("tune", UNITS_NET, "-s", "32", "--target-flops", "0.7", "--plot", "t.png")
    assert missing.exit_code != 0 and "pip install 'octswap[plot]'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and list(workdir.iterdir()) == []


@pytest.mark.parametrize(("args", "message"), [
    (["--target-latency", "0"], "--target-latency must be a ratio"),
    (["--target-flops", "0.01"], "closest found is predicted at"),
    (["--target-flops", "0.5", "--target-latency", "0.5"], "give one target"),
    (["--alphas", "0.5,x"], "--alphas takes comma-separated numbers"),
    (["--target-flops", "0.7", "--runtime", "onnxruntime"], "--runtime does not apply"),
    (["--device", "tpu"], "unknown device"),
    (["-o", "no/such/folder/p.yaml"], "cannot write to no/such/folder"),
    (["--target-flops", "0.7", "-o", "p.yaml", "--measurements", "./p.yaml"], "would both be p.yaml"),
])  # fmt: skip
def test_cli_bad_targets_exit_2_with_one_line_and_write_nothing(workdir, args, message):
    result = _run("tune", UNITS_NET, "-s", "32", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(workdir.iterdir()) == []


def test_predicted_change_applies_measured_ratios_to_the_convs_times_inside_the_original():
    from octswap.tuning.cache import MeasurementCache
    from octswap.tuning.costs import ELEMENTWISE_SHARE, ConvTiming, LatencyTable

    class Fixed(LatencyTable):  # ratios fixed by hand instead of timed
        def _measure(self, site, in_low, out_low, form):
            return ConvTiming(2.0, 1.0 if form == "pair" else 3.0)

    space = SearchSpace(UnitsNet(), policy=Policy(), input_shape=SHAPE)
    table = Fixed(MeasurementCache(None, {}, resume=False), batch=1, threads=1)
    convs = {s.name: 0.01 for s in space.sites}
    table.set_reference(1.0, convs, space.sites)
    decisions = space.decisions_for({"a1": 0.5})
    octave = [d for d in decisions if d.action == "octave"]
    assert [d.name for d in octave] == ["a1", "a2"]  # a1 converted; a2 reads its pair ("last")
    elements = {s.name: s.out_channels * s.output_size[0] * s.output_size[1] * s.calls for s in space.sites}
    following_a1 = (1.0 - 0.01 * len(convs)) * elements["a1"] / sum(elements.values())
    expected = 2 * 0.01 * (1.0 / 2.0 - 1) - following_a1 * ELEMENTWISE_SHARE * 0.75 * 16 / 32
    assert table.change(decisions, space.forms(decisions)) == pytest.approx(expected)


class _Ratio:
    """A whole-model measurement: ``ratio``, and a latency result with that ratio."""

    def __init__(self, ratio):
        from octswap.inference import InferenceOptions
        from octswap.latency import LatencyResult, Timing

        self.latency = None
        if ratio is not None:
            self.latency = LatencyResult(8, 2, "cpu", InferenceOptions(), Timing(1.0, 0.0, 5), Timing(ratio, 0.0, 5))

    @property
    def ratio(self):
        return self.latency.ratio if self.latency is not None else None


def _calibrating_run(measured, scale=10.0):
    """A tuning run whose per-unit savings are fixed by hand and whose whole-model
    measurement returns ``measured`` (the ratio), counting the measurements."""
    from octswap.tuning.cache import MeasurementCache
    from octswap.tuning.tuner import _Run

    run = _Run.__new__(_Run)
    run.scale, run.notes, run.calls, run.calibrations = scale, [], [], 0
    run.store = MeasurementCache(None, {}, resume=False)

    class Savings:  # additive over units, scaled like Objectives.saving_of
        factor = 1.0
        agreement = None  # no data

        def saving(self, assignment):
            return sum({"a": {0.25: 1.0, 0.5: 2.0}, "b": {0.25: -0.5, 0.5: -1.0}, "c": {0.25: 0.5, 0.5: 0.25}}[u][al]
                       for u, al in assignment.items() if al)  # fmt: skip

    run.objectives = Savings()

    def measure(assignment, attempt, *, stage, agreement):
        run.calls.append(dict(assignment))
        return _Ratio(measured)

    run._measure = measure
    options = {u: [Option(0.0, 0.0), Option(0.25, run.objectives.saving({u: 0.25})), Option(0.5, run.objectives.saving({u: 0.5}))]
               for u in "abc"}  # fmt: skip
    return run, options


@pytest.mark.parametrize(("measured", "factor"), [(0.7, 1.2), (0.85, 0.6), (0.5, 1.5), (0.95, 0.5)])
def test_calibration_scales_every_saving_by_one_whole_measurement(measured, factor):
    from octswap.tuning.tuner import CALIBRATION_BOUNDS

    run, options = _calibrating_run(measured)
    calibrated = run.calibrate(options)
    # Each unit at its own best alpha, units that only cost left out: a at 0.5 (2.0), c at 0.25 (0.5).
    assert run.calls == [{"a": 0.5, "c": 0.25}] and run.calibrations == 1
    # Measured saving (1 - ratio) x 10 s against 2.5 s predicted, within the bounds.
    assert factor == pytest.approx(min(max((1 - measured) * 10.0 / 2.5, CALIBRATION_BOUNDS[0]), CALIBRATION_BOUNDS[1]))
    assert run.objectives.factor == pytest.approx(factor)
    for unit in options:
        assert [o.saving for o in calibrated[unit]] == pytest.approx([o.saving * factor for o in options[unit]])
        assert [o.alpha for o in calibrated[unit]] == [o.alpha for o in options[unit]]
    assert "scaled by" in run.notes[0]
    # The measurement is cached: a second run on the same store measures nothing.
    again, _ = _calibrating_run(0.1)
    again.store = run.store
    again.calibrate(options)
    assert again.calls == [] and again.objectives.factor == pytest.approx(factor)


def test_no_calibration_where_too_little_is_predicted_to_save():
    run, options = _calibrating_run(0.5, scale=26.0)  # 2.5 s of 26: under a tenth
    assert run.calibrate(options) is options and run.calls == [] and run.objectives.factor == 1.0


def test_a_fastest_policy_that_measures_short_of_its_prediction_is_checked_with_fewer_units():
    """Predicted 0.975 (a and c save 2.5 s of 100), measured 0.999: faster than the original,
    but not as predicted, so the units saving at least 1% alone (a) are measured too, and
    the faster of the two kept; one measured as predicted is not checked again."""
    from types import SimpleNamespace

    from octswap.tuning.goal import Goal

    ZERO = {"a": 0.0, "b": 0.0, "c": 0.0}  # noqa: N806 - a constant of this test
    for first, scale, expected_calls, chosen in ((0.999, 100.0, [{"a": 0.5, "c": 0.25}, {"a": 0.5}], 0.98),
                                                 (0.985, 100.0, [{"a": 0.5, "c": 0.25}], 0.985),
                                                 # No unit saves 1% of 1000 s alone: no smaller policy to try,
                                                 # and the original is what is left: converted with nothing,
                                                 # not timed (its ratio is 1, not noise around it).
                                                 (1.02, 1000.0, [{"a": 0.5, "c": 0.25}], 1.0)):  # fmt: skip
        run, options = _calibrating_run(None, scale=scale)
        run.table = object()  # latency is timed
        run.space = SimpleNamespace(units=[SimpleNamespace(name=u) for u in "abc"])
        converted = []
        run._convert = lambda assignment: converted.append(assignment) or _Ratio(None)  # noqa: B023
        measured = {(("a", 0.5), ("c", 0.25)): first, (("a", 0.5),): 0.98}

        def measure(assignment, attempt, **_):
            run.calls.append(dict(assignment))
            tried = _Ratio(measured[tuple(sorted(assignment.items()))])
            tried.assignment = assignment
            return tried

        run._measure = measure
        best = run._check({"a": 0.5, "c": 0.25}, options, Goal("fastest", None, 0.02), [])
        assert run.calls == expected_calls and best.ratio == chosen
        assert any("measured 0.999" in n for n in run.notes) == (first == 0.999)
        assert {} not in run.calls and converted == ([ZERO] if first > 1 else [])
        if first > 1:
            assert best.latency.converted == best.latency.original and "nothing converted" in run.notes[-1]


def test_a_fastest_policy_that_converts_nothing_is_not_timed():
    from types import SimpleNamespace

    from octswap.tuning.goal import Goal

    run, options = _calibrating_run(None, scale=10.0)
    run.table = object()
    run.space = SimpleNamespace(units=[SimpleNamespace(name=u) for u in "abc"])
    run._convert = lambda assignment: _Ratio(None)
    tried = run._check({"a": 0.0, "b": 0.0, "c": 0.0}, options, Goal("fastest", None, 0.02), [])
    assert run.calls == [] and tried.latency is None and "nothing converted" in run.notes[-1]


def test_a_target_the_separate_figures_miss_is_met_by_a_curve_point_predicted_whole():
    """The curve's own savings (1 and 2) never reach 3, but predicted whole (units interact)
    a reaches 3.5: it is chosen, not refused; b, also reaching, loses more."""
    from octswap.tuning.goal import Goal
    from octswap.tuning.search import Point

    run, _ = _calibrating_run(None, scale=10.0)
    whole = {"a": 3.5, "b": 3.2, "c": 0.5}
    run.objectives.saving = lambda assignment: sum(whole[u] for u, al in assignment.items() if al)
    front = [Point(0.5, 0.05, ("c", 0.5, None)), Point(1.0, 0.1, ("a", 0.5, None)), Point(2.0, 0.3, ("b", 0.5, None))]
    assert run._reach(front, 3.0, Goal("latency", 0.7, 0.02), {}) == {"a": 0.5}


def test_the_printed_curve_keeps_no_row_another_beats_and_repeats_none():
    """The front's points predicted whole: b is slower than a for more drop (units interact),
    c repeats a's printed ratio; only a and d are a trade-off."""
    from octswap.tuning.search import Point

    run, _ = _calibrating_run(None, scale=10.0)
    whole = {"a": 0.70, "b": 0.72, "c": 0.7004, "d": 0.90}  # predicted ratios
    run.objectives.saving = lambda assignment: (1 - whole[next(iter(assignment))]) * 10.0
    front = [Point(0.0, drop, (unit, 0.5, None)) for unit, drop in (("d", 0.1), ("c", 0.35), ("b", 0.5), ("a", 0.3))]
    assert run._curve(front) == ((pytest.approx(0.70), 0.3), (pytest.approx(0.90), 0.1))


@pytest.mark.parametrize(("runtime", "device", "multiple", "expected"),
                         [("onnxruntime", "cpu", 1, 16), ("onnxruntime", "cpu", 8, 8), ("pytorch", "cpu", 1, 1)])  # fmt: skip
def test_onnxruntime_rounds_splits_to_its_channel_block_unless_asked_otherwise(runtime, device, multiple, expected):
    from octswap.tuning.goal import runtime_policy

    policy, notes = runtime_policy(Policy(channel_multiple=multiple), runtime, device)
    assert policy.channel_multiple == expected
    assert bool(notes) == (expected != multiple)


def test_conv_times_inside_the_original_cover_every_conv():
    from octswap.inference import InferenceOptions
    from octswap.tuning.costs import original_times

    times = original_times(UnitsNet(), SHAPE, batch=1, threads=1, device="cpu", options=InferenceOptions(),
                           min_time=0.05)  # fmt: skip
    names = {n for n, m in UnitsNet().named_modules() if isinstance(m, nn.Conv2d)}
    assert set(times) == names and all(t > 0 for t in times.values())


@pytest.mark.parametrize(("in_low", "out_low", "form"), [(0, 16, "pair"), (16, 0, "pair"), (16, 8, "block"), (0, 8, "block")])
def test_each_form_of_octave_conv_is_timed_against_the_plain_conv(in_low, out_low, form):
    from octswap.tuning.cache import MeasurementCache
    from octswap.tuning.costs import LatencyTable

    site = ConvSite("c", "Conv2d", 32, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1, False, "zeros", (9, 9), (9, 9), 1)
    cache = MeasurementCache(None, {}, resume=False)
    table = LatencyTable(cache, batch=1, threads=1, rounds=1, min_round_time=0.001)
    timing = table.timing(site, in_low=in_low, out_low=out_low, form=form)
    assert timing.plain > 0 and timing.octave > 0 and table.measured == 1
    assert table.timing(site, in_low=in_low, out_low=out_low, form=form) == timing and table.measured == 1


# ------------------------------------------------------------------ ONNX Runtime
@pytest.mark.parametrize(("in_low", "out_low", "form"), [(16, 8, "pair"), (0, 8, "block")])
def test_convs_timed_in_onnxruntime_sessions(in_low, out_low, form):
    pytest.importorskip("onnxruntime")
    from octswap.tuning.cache import MeasurementCache
    from octswap.tuning.costs import LatencyTable

    site = ConvSite("c", "Conv2d", 32, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1, False, "zeros", (9, 9), (9, 9), 1)
    table = LatencyTable(MeasurementCache(None, {}, resume=False), batch=1, threads=1, rounds=1,
                         min_round_time=0.001, runtime="onnxruntime")  # fmt: skip
    try:
        timing = table.timing(site, in_low=in_low, out_low=out_low, form=form)
        assert timing.plain > 0 and timing.octave > 0 and table.measured == 1
        # The plain conv alone (the original's per-conv stand-in) reuses its export and is cached.
        plain = table.plain_seconds(site)
        assert plain > 0 and table.plain_seconds(site) == plain and table.measured == 2
        assert len(table.onnx._files) == 2  # one plain conv, one octave conv
    finally:
        table.onnx.close()


def test_an_isolated_convs_layout_conversions_at_its_edges_are_not_counted_as_its_time():
    """A conv alone converts its input into the blocked layout and its output back; between
    convs it does neither. Exactly those two nodes are the edges, and the share of kernel
    time left is what their profile says is left."""
    pytest.importorskip("onnxruntime")
    import onnx
    import onnxruntime as ort

    from octswap.tuning.onnx_costs import OnnxTimer, _edge_reorders

    timer = OnnxTimer(threads=1)
    try:
        x = torch.randn(2, 32, 16, 16)
        two = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()
        path = timer._export("two", two, (x,))
        optimized = path.with_suffix(".check.onnx")
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(optimized)
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(str(optimized)).graph.node
        reorders = [n for n in nodes if n.op_type.startswith("Reorder")]
        if not reorders:
            pytest.skip("ONNX Runtime runs no blocked layout on this CPU")
        assert sorted(n.op_type for n in reorders) == ["ReorderInput", "ReorderOutput"]  # none between the convs
        assert _edge_reorders(optimized) == {n.name for n in reorders}
        name = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
        share = timer.in_context_share(path, {name: x.numpy()})
        assert 0 < share < 1 and timer.in_context_share(path, {}) == share  # cached per file
    finally:
        timer.close()


def test_an_unknown_or_missing_runtime_is_refused(workdir, monkeypatch):
    with pytest.raises(InputError, match="unknown runtime 'tvm'"):
        tune(UnitsNet(), input_shape=SHAPE, runtime="tvm")
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    result = _run("tune", UNITS_NET, "-s", "32", "--runtime", "onnxruntime")
    assert result.exit_code != 0 and "pip install 'octswap[export]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and list(workdir.iterdir()) == []


@pytest.mark.slow
def test_a_whole_tune_in_onnxruntime(workdir):
    pytest.importorskip("onnxruntime")
    result = _run("tune", UNITS_NET, "-s", "32", "--runtime", "onnxruntime", "-b", "1", "-t", "1", "--rounds", "2",
                  "--alphas", "0.5", "-f", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["runtime"] == "onnxruntime" and data["measured_ratio"] > 0 and data["measurements"] > 0
