"""Checks shared by octswap's configuration files: policies and zoo manifests.

Each kind of file words its mistakes its own way (``policy: rules[0]: ...`` raised as
:class:`~octswap.errors.PolicyError`, ``manifest zoo.yaml: ...`` as
:class:`~octswap.errors.InputError`); a :class:`ConfigChecks` holds that wording, and the
checks themselves are written once.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["ConfigChecks"]

E = TypeVar("E", bound=Exception)


@dataclass(frozen=True)
class ConfigChecks(Generic[E]):
    """How one kind of configuration file reports a mistake.

    Attributes:
        error: the exception type the checks build.
        template: the message at a location, with ``{where}`` and ``{message}`` fields.
        bare: the message when ``where`` is empty, with a ``{message}`` field; ``None``:
            ``template`` either way.
        list_keys: an unknown key with no close match lists the valid keys.

    Example:
        >>> checks = ConfigChecks(ValueError, "manifest {where}: {message}")
        >>> checks.fail("zoo.yaml", "'models' must be a non-empty list")
        ValueError("manifest zoo.yaml: 'models' must be a non-empty list")
    """

    error: type[E]
    template: str
    bare: str | None = None
    list_keys: bool = False

    def fail(self, where: str, message: str) -> E:
        """The error (to raise) for ``message`` at ``where``."""
        if not where and self.bare is not None:
            return self.error(self.bare.format(message=message))
        return self.error(self.template.format(where=where, message=message))

    def check_keys(self, data: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
        """Raise :meth:`fail` for the first key of ``data`` not in ``allowed``, with a hint.

        The hint names the closest allowed key, or else (with ``list_keys``) all of them.
        """
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                if close:
                    hint = f" (did you mean {close[0]!r}?)"
                else:
                    hint = f" (valid keys: {', '.join(allowed)})" if self.list_keys else ""
                raise self.fail(where, f"unknown key {key!r}{hint}")
