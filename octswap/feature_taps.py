"""The outputs of named submodules as a model's output, for feature distillation.

:class:`Tapped` runs a model and returns ``{name: output}`` of the submodules it watches
(forward hooks), instead of the model's own output. A detector in eval mode thus yields
its backbone's and heads' feature maps without its post-processing, and without the
targets its train-mode forward wants. After the first call it knows how often each
watched module runs per forward, and stops the forward once they all have (the rest of
the model, NMS and all, is skipped). With ``complete=True`` the forward runs to its end and
the model's own output comes back beside the taps: a detector in train mode, given its
targets, returns its loss dict (healing with the detector's own loss and its features).

Example:
    >>> tapped = Tapped(detector, ["backbone"])   # doctest: +SKIP
    >>> tapped(images)["backbone"]["0"].shape     # doctest: +SKIP
    torch.Size([2, 256, 32, 32])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import fx, nn

from octswap.errors import InputError

__all__ = ["Tapped"]


class _Enough(Exception):
    """Raised by the last hook: every watched module has run."""


def _why(model: nn.Module, name: str) -> str:
    """Why ``name`` may not have run: it sits inside a traced graph that calls only its leaves."""
    parts = name.split(".")
    for depth in range(len(parts)):
        owner = model.get_submodule(".".join(parts[:depth]))
        if isinstance(owner, fx.GraphModule):
            called = {str(n.target) for n in owner.graph.nodes if n.op == "call_module"}
            rest = ".".join(parts[depth:])
            if rest not in called:
                return (" (the converted model was traced there, so only the layers its graph calls run: "
                        "distil its outputs without --features, or convert with --mode layer)")
            return ""
    return ""


class Tapped(nn.Module):
    """``model`` whose forward returns the outputs of ``names`` (a list where a module runs
    several times per forward).

    Raises:
        InputError: a name is not a submodule of ``model``, or a watched module did not run.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], *, complete: bool = False) -> None:
        super().__init__()
        if not names:
            raise InputError("feature distillation needs at least one module name")
        self.model = model
        self.names = list(names)
        self.complete = complete
        self._seen: dict[str, list[Any]] = {}
        self._calls: dict[str, int] | None = None  # per forward, known after the first
        for name in self.names:
            try:
                model.get_submodule(name)
            except AttributeError:
                raise InputError(f"--features: {name!r} is not a submodule of the model") from None

    def _hook(self, name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self._seen.setdefault(name, []).append(output)
            calls = self._calls
            if calls is not None and not self.complete and all(len(self._seen.get(n, ())) >= calls[n] for n in self.names):
                raise _Enough

        return hook

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``{name: output}`` of the watched modules; with ``complete``, ``(taps, model output)``."""
        self._seen = {}
        output = None
        # Hooks live only inside this call: the model stays a plain model everywhere else.
        handles = [self.model.get_submodule(n).register_forward_hook(self._hook(n)) for n in self.names]
        try:
            output = self.model(*args, **kwargs)
        except _Enough:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = [n for n in self.names if n not in self._seen]
        if missing:
            why = _why(self.model, missing[0])
            raise InputError(f"--features: {', '.join(missing)} did not run in the model's forward{why}")
        if self._calls is None:
            self._calls = {n: len(self._seen[n]) for n in self.names}
        seen, self._seen = self._seen, {}
        taps = {n: v[0] if len(v) == 1 else v for n, v in seen.items()}
        return (taps, output) if self.complete else taps
