"""`octswap zoo`: manifests, worker isolation, output schemas, resume and CI gates."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from octswap.cli import app
from octswap.errors import InputError
from octswap.zoo import (
    RESULT_FIELDS,
    Manifest,
    ZooTask,
    check_gates,
    expand_models,
    load_manifest,
    manifest_from_dict,
    merge_results,
    parse_shard,
)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def check_outputs(out: Path, expected: int) -> dict:
    """Every output file exists and has the documented shape; returns results.json."""
    data = json.loads((out / "results.json").read_text())
    assert set(data) == {"octswap_version", "manifest", "manifest_hash", "shard", "wall_time_s", "interrupted",
                         "counts", "results", "task_hashes"}
    assert len(data["results"]) == expected
    for row in data["results"]:
        assert set(row) == set(RESULT_FIELDS)
        assert row["status"] in ("ok", "failed")
        if row["status"] == "ok":
            assert row["flops_after"] <= row["flops_before"] and row["params_after"] == row["params_before"]
            assert row["error"] is None
        else:
            assert row["error"]
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(RESULT_FIELDS) and len(rows) == expected
    suite = ET.parse(out / "junit.xml").getroot()
    assert suite.tag == "testsuites" and int(suite.get("tests")) == expected
    assert int(suite.get("failures")) == data["counts"]["failed"]
    assert len(suite.findall(".//testcase")) == expected
    assert len(suite.findall(".//failure")) == data["counts"]["failed"]
    summary = (out / "summary.md").read_text()
    assert summary.startswith(f"## octswap zoo: {data['counts']['ok']} ok, {data['counts']['failed']} failed")
    assert summary.count("\n| ") == expected + 1  # header + one row per task
    return data


def test_expand_models_globs_and_excludes():
    assert expand_models("resnet1*") == ["resnet101", "resnet152", "resnet18"]
    assert expand_models("resnet1*", exclude=["resnet15*"]) == ["resnet101", "resnet18"]
    assert expand_models("fcn_resnet50") == ["fcn_resnet50"]
    with pytest.raises(InputError, match="did you mean resnet50"):
        expand_models("resnet5")


@pytest.mark.parametrize(
    "data,message",
    [
        ({"models": []}, "'models' must be a non-empty list"),
        ({"modles": ["resnet18"]}, "unknown key 'modles' (did you mean 'models'?)"),
        ({"models": [{"name": "resnet18", "alphas": [1.5]}]}, "models[0]: alphas must be numbers in [0, 1)"),
        ({"models": [{"name": "resnet18", "polcy": "x.yaml"}]}, "unknown key 'polcy' (did you mean 'policy'?)"),
        ({"models": [{"name": "resnet18", "policy": "missing.yaml"}]}, "policy file not found"),
        ({"models": ["nosuchnet*"]}, "no torchvision classification model matches"),
        ({"models": [{"name": "resnet18", "mode": "fast"}]}, "mode must be one of 'auto', 'graph', 'regions', 'layer', got 'fast'"),
        ({"defaults": {"alpha": 0.5}, "models": ["resnet18"]}, "unknown key 'alpha' (did you mean 'alphas'?)"),
    ],
)
def test_manifest_validation(data, message, tmp_path):
    with pytest.raises(InputError) as info:
        manifest_from_dict(data, base=tmp_path)
    assert message in str(info.value)


def test_manifest_expansion_and_overrides(tmp_path):
    (tmp_path / "p.yaml").write_text("alpha: 0.5\n")
    manifest = manifest_from_dict(
        {"defaults": {"alphas": [0.25, 0.5], "policy": "p.yaml"},
         "models": ["resnet1*", {"name": "mobilenet_v2", "alphas": [0.375], "input_size": 160}]},
        base=tmp_path,
    )  # fmt: skip
    keys = [t.key for t in manifest.tasks]
    assert keys[:2] == ["resnet101@0.25", "resnet101@0.5"] and keys[-1] == "mobilenet_v2@0.375"
    assert len(keys) == 7 and manifest.tasks[-1].input_size == "160"
    assert all(t.policy == str(tmp_path / "p.yaml") for t in manifest.tasks)
    # The hash changes with anything that decides the result, the policy text included.
    before = manifest.tasks[0].entry_hash
    (tmp_path / "p.yaml").write_text("alpha: 0.125\n")
    assert manifest.tasks[0].entry_hash != before


def test_shipped_zoo_manifests_load():
    assert len(load_manifest(CONFIGS / "zoo-torchvision.yaml").tasks) >= 85
    assert load_manifest(CONFIGS / "zoo-smoke.yaml").tasks


def test_failures_and_a_killed_worker_are_recorded_and_the_run_goes_on(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "defaults: {input_size: 3x16x16}\n"
        "models:\n"
        "  - {name: 'tests.nets:dies_on_build'}\n"
        "  - {name: 'tests.nets:broken'}\n"
        "  - {name: 'tests.nets:tiny_resnet', alphas: [0.25, 0.5]}\n"
    )
    out = tmp_path / "out"
    result = run("zoo", manifest, "--out", out, "--jobs", "2")
    assert result.exit_code == 1, result.output
    data = check_outputs(out, 4)
    by_model = {(r["model"], r["alpha"]): r for r in data["results"]}
    dead = by_model[("tests.nets:dies_on_build", 0.25)]
    assert dead["status"] == "failed" and dead["error"].startswith("worker died: SIGKILL")
    broken = by_model[("tests.nets:broken", 0.25)]
    assert broken["status"] == "failed" and "does not run on an input" in broken["error"]
    assert by_model[("tests.nets:tiny_resnet", 0.5)]["status"] == "ok"
    assert "gate: tests.nets:broken@0.25: failed" in result.stderr

    # --resume keeps the finished tasks and runs only the rest again.
    again = run("zoo", manifest, "--out", out, "--resume")
    assert again.exit_code == 1
    assert "resuming: 2 of 4 tasks already done" in again.stderr
    assert check_outputs(out, 4)["counts"] == {"ok": 2, "failed": 2}


def test_gates_on_ratio_and_baseline(tmp_path):
    out = tmp_path / "out"
    args = ("zoo", "--models", "tests.nets:tiny_resnet", "--alpha", "0.5", "--input-size", "16", "--out", out)
    assert run(*args).exit_code == 0
    ratio = json.loads((out / "results.json").read_text())["results"][0]["flops_ratio"]
    loose = run(*args, "--max-flops-ratio", "0.99")
    assert loose.exit_code == 0
    strict = run(*args, "--max-flops-ratio", "0.1")
    assert strict.exit_code == 1 and f"FLOPs ratio {ratio:.3f} > 0.1" in strict.stderr
    baseline = tmp_path / "baseline.json"
    old = json.loads((out / "results.json").read_text())
    old["results"][0]["flops_ratio"] = ratio - 0.05
    baseline.write_text(json.dumps(old))
    regressed = run(*args, "--baseline", baseline)
    assert regressed.exit_code == 1 and "FLOPs ratio regressed" in regressed.stderr


def test_check_gates_lists_failures():
    rows = [{"model": "a", "alpha": 0.25, "status": "failed", "error": "boom"}]
    assert check_gates(rows) == ["a@0.25: failed: boom"]


def test_usage_errors():
    assert run("zoo").exit_code == 2
    assert run("zoo", "--models", "resnet5").exit_code == 2


def test_smoke_manifest_end_to_end(tmp_path):
    out = tmp_path / "smoke"
    result = run("zoo", CONFIGS / "zoo-smoke.yaml", "--out", out, "--jobs", "2", "--save")
    assert result.exit_code == 0, result.output
    data = check_outputs(out, len(load_manifest(CONFIGS / "zoo-smoke.yaml").tasks))
    assert data["counts"]["failed"] == 0
    saved = [r["checkpoint"] for r in data["results"]]
    assert all(saved) and all(Path(p).is_file() for p in saved)


def test_ctrl_c_writes_the_results_so_far(tmp_path):
    from tests.processes import interrupt_when

    marker = tmp_path / "started"
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "defaults: {input_size: 3x16x16}\n"
        "models:\n"
        "  - tests.nets:tiny_resnet\n"
        f"  - {{name: 'tests.nets:slow_build', kwargs: {{marker: '{marker}'}}}}\n"
    )
    out = tmp_path / "out"
    code, stderr = interrupt_when(["zoo", manifest, "--out", out], marker)
    assert code == 130, stderr
    data = json.loads((out / "results.json").read_text())
    assert data["interrupted"] is True
    assert [(r["model"], r["status"]) for r in data["results"]] == [("tests.nets:tiny_resnet", "ok")]


# -------------------------------------------------------------------- shards
def test_shards_partition_the_tasks_deterministically():
    tasks = tuple(ZooTask(f"m{i}", 0.25 * (i % 2)) for i in range(7))
    manifest = Manifest(tasks)
    shards = [manifest.shard(k, 3) for k in (1, 2, 3)]
    assert sorted(t.model for s in shards for t in s) == sorted(t.model for t in tasks)  # each task exactly once
    assert [len(s) for s in shards] == [3, 2, 2]
    assert Manifest(tuple(tasks)).shard(2, 3) == shards[1]  # same list, same shard
    assert Manifest(tuple(tasks)).manifest_hash == manifest.manifest_hash
    assert Manifest(tasks[:-1]).manifest_hash != manifest.manifest_hash
    assert parse_shard("2/4") == (2, 4) and parse_shard(" 1 / 1 ") == (1, 1)
    for bad in ("0/2", "3/2", "1", "a/b", "1/0", "-1/2"):
        with pytest.raises(InputError, match="K/N"):
            parse_shard(bad)


def test_entry_hash_does_not_depend_on_where_the_checkout_is(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "p.yaml").write_text("alpha: 0.5\n")
    here, there = (ZooTask("resnet18", 0.5, policy=str(tmp_path / f / "p.yaml")) for f in ("a", "b"))
    assert here.entry_hash == there.entry_hash
    (tmp_path / "b" / "p.yaml").write_text("alpha: 0.25\n")
    assert here.entry_hash != there.entry_hash
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"\x00" * 64)
    before = ZooTask("resnet18", 0.5, weights=str(weights)).entry_hash
    weights.write_bytes(b"\x01" * 64)  # same size, new content: the task runs again on --resume
    assert ZooTask("resnet18", 0.5, weights=str(weights)).entry_hash != before


def _stable(rows):
    return [{k: v for k, v in r.items() if k not in ("wall_time_s", "checkpoint")} for r in rows]


def test_shards_merged_equal_one_run(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "defaults: {input_size: 3x16x16}\n"
        "models:\n"
        "  - {name: 'tests.nets:tiny_resnet', alphas: [0.125, 0.25, 0.5]}\n"
        "  - {name: 'tests.nets:broken'}\n"
        "  - {name: 'tests.nets:gated', alphas: [0.5]}\n"
    )
    whole = run("zoo", manifest, "--out", tmp_path / "whole", "--jobs", "2")
    assert whole.exit_code == 1  # broken fails
    one = run("zoo", manifest, "--out", tmp_path / "s1", "--shard", "1/2", "--jobs", "2")
    two = run("zoo", manifest, "--out", tmp_path / "s2", "--shard", "2/2")
    assert "shard 1/2: 3 of 5 tasks" in one.stderr and "shard 2/2: 2 of 5 tasks" in two.stderr
    assert check_outputs(tmp_path / "s1", 3)["shard"] == "1/2"
    merged = run("zoo", "merge", tmp_path / "s2", tmp_path / "s1", "--out", tmp_path / "merged")
    assert merged.exit_code == 1, merged.output  # the failed task still fails the merged run
    assert "gate: tests.nets:broken@0.25: failed" in merged.stderr
    expected, got = check_outputs(tmp_path / "whole", 5), check_outputs(tmp_path / "merged", 5)
    assert _stable(got["results"]) == _stable(expected["results"])  # same records, manifest order
    assert got["counts"] == expected["counts"] and got["manifest_hash"] == expected["manifest_hash"]
    by_model = {r["model"]: r for r in got["results"]}
    assert by_model["tests.nets:gated"]["mode"] == "auto" and by_model["tests.nets:gated"]["mode_used"] == "regions"
    assert by_model["tests.nets:tiny_resnet"]["mode_used"] == "graph"
    assert "auto (regions)" in (tmp_path / "merged" / "summary.md").read_text()

    # A missing shard is an error, not a smaller table; so are conflicts and other manifests.
    missing = run("zoo", "merge", tmp_path / "s1", "--out", tmp_path / "m2")
    assert missing.exit_code == 2 and "2 of 5 tasks have no record" in missing.stderr
    assert not (tmp_path / "m2").exists()
    forged = json.loads((tmp_path / "s2" / "results.json").read_text())
    forged["results"][0]["convs_converted"] += 1
    (tmp_path / "forged").mkdir()
    (tmp_path / "forged" / "results.json").write_text(json.dumps(forged))
    conflict = run("zoo", "merge", tmp_path / "s1", tmp_path / "s2", tmp_path / "forged", "--out", tmp_path / "m3")
    assert conflict.exit_code == 2 and "has different outcomes" in conflict.stderr and "convs_converted" in conflict.stderr
    # Inputs named by their results.json are guarded too; hand-edited task lists and records are refused.
    into_input = run("zoo", "merge", tmp_path / "s1", tmp_path / "s2" / "results.json", "--out", tmp_path / "s2")
    assert into_input.exit_code == 2 and "is one of the folders to merge" in into_input.stderr
    for edit, message in (
        (lambda d: d.update(task_hashes=d["task_hashes"][:2]), "does not match its manifest_hash"),
        (lambda d: d["results"].__setitem__(0, "x"), "not an octswap zoo results.json: a record is a str"),
        (lambda d: d["results"][0].update(alpha="0.5"), "a record's 'alpha' is '0.5', not a number"),
        (lambda d: d.update(task_hashes=[{}]), "task_hashes is not a list of strings"),
    ):
        edited = json.loads((tmp_path / "s1" / "results.json").read_text())
        edit(edited)
        (tmp_path / "edited").mkdir(exist_ok=True)
        (tmp_path / "edited" / "results.json").write_text(json.dumps(edited))
        refused = run("zoo", "merge", tmp_path / "edited", tmp_path / "s2", "--out", tmp_path / "m5")
        assert refused.exit_code == 2 and message in refused.stderr, refused.output
        assert "Traceback" not in refused.output and not (tmp_path / "m5").exists()
    other = tmp_path / "other.yaml"
    other.write_text("defaults: {input_size: 3x16x16}\nmodels: ['tests.nets:tiny_resnet']\n")
    assert run("zoo", other, "--out", tmp_path / "o", "--shard", "1/1").exit_code == 0
    mixed = run("zoo", "merge", tmp_path / "s1", tmp_path / "o", "--out", tmp_path / "m4")
    assert mixed.exit_code == 2 and "ran a different manifest" in mixed.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["zoo", "merge", "--out", "x"], "give the shard folders"),
        (["zoo", "merge", "nowhere", "--out", "x"], "results file not found"),
        (["zoo", "merge", "a", "--shard", "1/2"], "--shard does not apply"),
        (["zoo", "merge", "a", "--alpha", "0.5", "--jobs", "2"], "--alpha, --jobs do not apply"),
        (["zoo", "merge", "a", "--out", "afile"], "--out afile is a file, not a folder"),
        (["zoo", "--models", "tests.nets:tiny_resnet", "--out", "afile/sub"], "cannot write there"),
        (["zoo", "a.yaml", "b.yaml"], "give one manifest file"),
        (["zoo", "--models", "tests.nets:tiny_resnet", "--shard", "3/2"], "expected K/N"),
    ],
)
def test_shard_and_merge_usage_errors(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    result = run(*args)
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert "Traceback" not in result.output


def test_merge_refuses_its_own_input_as_output(tmp_path):
    (tmp_path / "s").mkdir()
    result = run("zoo", "merge", tmp_path / "s", "--out", tmp_path / "s")
    assert result.exit_code == 2 and "is one of the folders to merge" in result.stderr


def test_merge_results_of_an_older_run_says_so(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"octswap_version": "0.1.0", "results": []}))
    with pytest.raises(InputError, match="does not record its manifest"):
        merge_results([tmp_path])
