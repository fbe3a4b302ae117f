"""The tuner's measurements, saved as they are made: an interrupted or repeated run
(``octswap tune --resume``) re-measures nothing it already has."""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from octswap.checkpoint import atomic_write
from octswap.errors import InputError, OutputExistsError

__all__ = ["MeasurementCache", "machine"]

logger = logging.getLogger(__name__)

#: Seconds between saves while measuring (and always at :meth:`MeasurementCache.save`).
SAVE_EVERY = 2.0


class MeasurementCache:
    """Measurements by key, in a JSON file with the setting they were made in (``context``:
    machine, threads, batch, runtime, model...). ``path=None`` keeps them in memory only.

    Args:
        path: The file (written atomically, at most every :data:`SAVE_EVERY` seconds and at
            :meth:`save`).
        context: What the measurements depend on; a file made in another context is refused.
        resume: Reuse the file's measurements; without it an existing file is an error
            unless ``force`` (then it is started over).

    Raises:
        OutputExistsError: the file exists, without ``resume`` or ``force``.
        InputError: the file is unreadable, or was measured in another context.

    Example:
        >>> cache = MeasurementCache(None, {"threads": 2}, resume=False)
        >>> cache.put("conv|0|16", [0.001, 0.0008]); cache.get("conv|0|16")
        [0.001, 0.0008]
    """

    def __init__(self, path: str | Path | None, context: Mapping[str, Any], *, resume: bool, force: bool = False) -> None:
        self.path = Path(path) if path is not None else None
        self.context = json.loads(json.dumps(dict(context)))  # as it reads back
        self.entries: dict[str, Any] = {}
        self.reused = 0
        self._saved_at = time.monotonic()
        self._dirty = False
        if self.path is None or not self.path.exists():
            return
        if not resume and not force:
            raise OutputExistsError(f"{self.path} exists; pass --resume to reuse its measurements or --force to start over")
        if not resume:
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            saved, entries = data["context"], data["entries"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"cannot read measurements {self.path}: {err}") from None
        differ = sorted(k for k in set(saved) | set(self.context) if saved.get(k) != self.context.get(k))
        if differ:
            key = differ[0]
            raise InputError(f"{self.path} was measured with {key}={saved.get(key)!r}, not {self.context.get(key)!r}; "
                             "use another file or --force to start over")  # fmt: skip
        self.entries = dict(entries)
        logger.info("reusing %d measurements from %s", len(self.entries), self.path)

    def get(self, key: str) -> Any:
        value = self.entries.get(key)
        if value is not None:
            self.reused += 1
        return value

    def put(self, key: str, value: Any) -> None:
        self.entries[key] = value
        self._dirty = True
        if time.monotonic() - self._saved_at >= SAVE_EVERY:
            self.save()

    def save(self) -> None:
        """Write what was measured so far (nothing to do without a path or news)."""
        if self.path is None or not self._dirty:
            return
        text = json.dumps({"context": self.context, "entries": self.entries}, indent=1, sort_keys=True)
        atomic_write(self.path, lambda tmp: tmp.write_text(text, encoding="utf-8"), force=True)
        self._saved_at = time.monotonic()
        self._dirty = False


def machine() -> str:
    """The CPU's model name (Linux), else what :mod:`platform` says: measurements are of it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
