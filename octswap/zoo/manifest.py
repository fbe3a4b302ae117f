"""Zoo manifests: parsing and validation, glob expansion into tasks, and shards.

A :class:`Manifest` is the expanded task list of a manifest file (or of ``--models``):
every (model, alpha) as a :class:`ZooTask`, globs resolved. :meth:`Manifest.shard` and
:func:`parse_shard` pick one CI machine's share of it. The manifest format is described
in :mod:`octswap.zoo`.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from octswap.config_checks import ConfigChecks
from octswap.conversion import AUTO, MODES
from octswap.errors import InputError

__all__ = [
    "Manifest",
    "ZooTask",
    "expand_models",
    "load_manifest",
    "manifest_from_cli",
    "manifest_from_dict",
    "parse_shard",
]

_ENTRY_KEYS = ("name", "exclude", "alphas", "policy", "input_size", "mode", "weights", "kwargs", "part")
_DEFAULT_KEYS = ("alphas", "policy", "input_size", "mode", "weights")


@dataclass(frozen=True)
class ZooTask:
    """One (model, alpha) conversion of a zoo run."""

    model: str
    alpha: float
    mode: str = "auto"
    policy: str | None = None
    input_size: str | None = None  # None: the model's own (timm's pretrained_cfg), else 224
    weights: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)  # compared, not hashed
    part: str | None = None

    @property
    def key(self) -> str:
        """``model@alpha`` (``[part]`` after it when a part is converted): the task's name in logs."""
        return f"{self.model}@{self.alpha:g}" + (f"[{self.part}]" if self.part else "")

    @property
    def entry_hash(self) -> str:
        """Changes when anything that decides this task's result changes (policy file included)."""
        data = dataclasses.asdict(self)
        # Files by name and content, not by absolute path: shards on other machines, in
        # other checkouts, hash the same task alike, and a changed file runs again.
        files = {"policy": self.policy, "weights": self.weights}
        module, sep, _ = self.model.rpartition(":")
        if sep and module.endswith(".py"):  # path/to/file.py:factory
            files["model_file"] = module
        for key, path in files.items():
            if path and Path(path).is_file():
                data[key] = f"{Path(path).name} {_file_digest(str(Path(path).resolve()))}"
        blob = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _file_digest(path: str) -> str:
    """sha256 of a file's bytes (first 16 hex digits), read once per size and mtime."""
    stat = os.stat(path)
    return _digest(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """:func:`_file_digest`'s work; ``size`` and ``mtime_ns`` key the cache."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()[:16]


@dataclass(frozen=True)
class Manifest:
    """The expanded task list of a manifest (globs resolved), in order, and where it came from."""

    tasks: tuple[ZooTask, ...]
    source: str = "<cli>"

    @property
    def task_hashes(self) -> tuple[str, ...]:
        """Every task's :attr:`ZooTask.entry_hash`, in manifest order."""
        return tuple(t.entry_hash for t in self.tasks)

    @property
    def manifest_hash(self) -> str:
        """Identifies the expanded task list (globs resolved): equal on every shard of one run."""
        return _hash_of(self.task_hashes)

    def shard(self, index: int, count: int) -> tuple[ZooTask, ...]:
        """Shard ``index`` of ``count`` (1-based): every ``count``-th task from the ``index``-th.

        Deterministic: it depends only on the expanded task list, which every machine with
        the same manifest, model registries and octswap version builds alike. Interleaving
        spreads a glob's big and small models over the shards.

        Example:
            >>> Manifest(tuple(ZooTask(f"m{i}", 0.5) for i in range(5))).shard(2, 2)  # doctest: +ELLIPSIS
            (ZooTask(model='m1', ...), ZooTask(model='m3', ...))
        """
        if not 1 <= index <= count:
            raise InputError(f"shard {index}/{count}: expected 1 <= K <= N")
        return self.tasks[index - 1 :: count]


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` as ``(K, N)``, 1-based.

    Raises:
        InputError: not of the form K/N with 1 <= K <= N.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None or not 1 <= int(match[1]) <= int(match[2]):
        raise InputError(f"--shard: expected K/N with 1 <= K <= N (e.g. 1/4), got {text!r}")
    return int(match[1]), int(match[2])



def _hash_of(task_hashes: Sequence[str]) -> str:
    """The hash of a task list (:attr:`Manifest.manifest_hash`; :func:`~octswap.zoo.results.merge_results` checks it)."""
    return hashlib.sha256("\n".join(task_hashes).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ manifests
_CHECKS = ConfigChecks(InputError, "manifest {where}: {message}")
_fail = _CHECKS.fail
_check_keys = _CHECKS.check_keys


def _alphas(value: Any, where: str) -> tuple[float, ...]:
    """An entry's ``alphas`` (one number or a list) checked: numbers in [0, 1), at least one."""
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise _fail(where, f"alphas must be numbers in [0, 1), got {v!r}")
        out.append(float(v))
    if not out:
        raise _fail(where, "alphas is empty")
    return tuple(out)


def _classification_models() -> list[str]:
    """torchvision's classification model names (what a glob expands over)."""
    from torchvision import models

    return models.list_models(module=models)


def expand_models(pattern: str, exclude: Sequence[str] = ()) -> list[str]:
    """torchvision names matching a glob (classification models; any registered name when exact),
    or timm's (``timm:resnet*``, through timm's own listing); ``exclude`` globs apply to both.

    Example:
        >>> expand_models("resnet1*")
        ['resnet101', 'resnet152', 'resnet18']
    """
    from torchvision import models

    from octswap.timm_models import PREFIX, is_timm_name, list_timm_models

    if is_timm_name(pattern) and any(ch in pattern for ch in "*?["):
        names = [n for n in list_timm_models(pattern.removeprefix(PREFIX))
                 if not any(fnmatch.fnmatch(n, x) or fnmatch.fnmatch(n, PREFIX + x) for x in exclude)]  # fmt: skip
        if not names:
            raise InputError(f"no timm model matches {pattern!r}")
        return names
    if ":" in pattern:
        return [pattern]
    if not any(ch in pattern for ch in "*?["):
        if pattern not in models.list_models():
            close = difflib.get_close_matches(pattern, models.list_models(), n=3)
            raise InputError(f"unknown model {pattern!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        return [pattern]
    names = [n for n in _classification_models() if fnmatch.fnmatch(n, pattern)]
    names = [n for n in names if not any(fnmatch.fnmatch(n, x) for x in exclude)]
    if not names:
        raise InputError(f"no torchvision classification model matches {pattern!r}")
    return names


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a zoo manifest; paths in it are relative to its folder."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"manifest not found: {path}") from None
    except yaml.YAMLError as err:
        raise InputError(f"manifest {path}: invalid YAML: {err}") from None
    return manifest_from_dict(data, base=path.parent, source=str(path))


def manifest_from_dict(data: Any, *, base: Path = Path("."), source: str = "<dict>") -> Manifest:
    """Validate a parsed manifest and expand it into tasks; policy paths are relative to ``base``.

    Raises:
        InputError: a malformed manifest, unknown keys or models, or a missing policy file.
    """
    if not isinstance(data, Mapping):
        raise _fail(source, "expected a mapping with 'models'")
    _check_keys(data, ("version", "defaults", "models"), source)
    if data.get("version", 1) != 1:
        raise _fail(source, f"unsupported version {data.get('version')!r}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise _fail(f"{source}: defaults", "expected a mapping")
    _check_keys(defaults, _DEFAULT_KEYS, f"{source}: defaults")
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise _fail(source, "'models' must be a non-empty list")
    tasks: list[ZooTask] = []
    for index, entry in enumerate(entries):
        where = f"{source}: models[{index}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise _fail(where, "expected a model name or a mapping with 'name'")
        _check_keys(entry, _ENTRY_KEYS, where)
        merged = {**defaults, **entry}
        alphas = _alphas(merged.get("alphas", [0.25]), where)
        policy = merged.get("policy")
        if policy is not None:
            policy = str((base / policy) if not Path(policy).is_absolute() else Path(policy))
            if not Path(policy).is_file():
                raise _fail(where, f"policy file not found: {policy}")
        mode = merged.get("mode", AUTO)
        if mode not in MODES:
            raise _fail(where, f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        kwargs = merged.get("kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise _fail(where, "kwargs must be a mapping")
        part = merged.get("part")
        if part is not None and (not isinstance(part, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", part)):
            raise _fail(where, f"part must be a submodule name such as 'backbone', got {part!r}")
        exclude = merged.get("exclude") or []
        try:
            names = expand_models(str(merged["name"]), exclude)
        except InputError as err:
            raise _fail(where, str(err)) from None
        for name in names:
            for alpha in alphas:
                tasks.append(ZooTask(
                    model=name, alpha=alpha, mode=mode, policy=policy, weights=merged.get("weights"),
                    input_size=None if merged.get("input_size") is None else str(merged["input_size"]),
                    kwargs=dict(kwargs), part=part,
                ))  # fmt: skip
    return Manifest(tasks=tuple(dict.fromkeys(tasks)), source=source)  # duplicates run once


def manifest_from_cli(models: str, alphas: str, *, policy: str | None = None, input_size: str | None = None,
                      mode: str = AUTO) -> Manifest:  # fmt: skip
    """The manifest for ``octswap zoo --models 'resnet*,mobilenet_v2' --alpha 0.25,0.5``."""
    try:
        alpha_values = [float(a) for a in alphas.split(",") if a.strip()]
    except ValueError:
        raise InputError(f"--alpha: expected numbers separated by commas, got {alphas!r}") from None
    data = {
        "defaults": {"alphas": alpha_values, "input_size": input_size, "mode": mode,
                     **({"policy": str(Path(policy).resolve())} if policy else {})},
        "models": [m.strip() for m in models.split(",") if m.strip()],
    }  # fmt: skip
    return manifest_from_dict(data, source="--models")

