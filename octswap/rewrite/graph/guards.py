"""Input checks on traced values: kept as guards, so that a check does not cost a model its graph.

segmentation_models_pytorch's models begin their forward with ``check_input_shape(x)``: ``h, w =
x.shape[-2:]``, then ``if h % output_stride != 0 or w % output_stride != 0: raise RuntimeError``.
``torch.fx`` cannot branch on a traced value, so the whole model used to fail to trace. The tracer
(:class:`~octswap.rewrite.graph.tracing.Tracer`) asks :func:`guard_value` instead: when the branch on
a traced value belongs to an input check -- an ``if`` one of whose branches only raises, or an
``assert`` -- the value is computed at the probe input (the graph traced so far, run on the probe's
arguments), the trace follows the branch the probe takes, and the graph gains a :func:`check`
node that raises where the value differs, as the model's own check would have raised. So the
model keeps its check at every other size, and its graph. The guard's error names the model's
test, line and raise statement, and is an instance of the exception the original raises where
that is a built-in one (``ValueError``, ``RuntimeError``, ``AssertionError`` of an ``assert``).
Only tests whose every evaluated operand decides the outcome are guarded (a single test; ``a or
b`` before a raise; ``a and b`` before the branch that does not raise); any other branch on a
traced value stops the trace as before.

This is Hugging Face's idea (its fx tracer records concrete shapes to get past such checks), kept
to checks so that no size the original accepts is refused.
"""

from __future__ import annotations

import ast
import builtins
import copy
import functools
import inspect
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import fx
from torch.fx._symbolic_trace import _maybe_revert_all_patches

__all__ = ["InputCheckError", "check", "guard_value"]


class InputCheckError(RuntimeError):
    """A converted model's guard: the original's own input check would have refused this input.

    Where the original raises a built-in exception (``raise ValueError(...)``, an ``assert``),
    the guard's error is also an instance of it (:func:`error_class`), so code that catches the
    original's error catches the converted model's.
    """


@functools.cache
def error_class(kind: str) -> type[InputCheckError]:
    """:class:`InputCheckError`, also a subclass of the built-in exception named ``kind``
    (``""`` or a name that is not a built-in exception: :class:`InputCheckError` itself)."""
    base = getattr(builtins, kind, None) if kind else None
    if not (isinstance(base, type) and issubclass(base, Exception)) or issubclass(InputCheckError, base):
        return InputCheckError
    try:
        return type("InputCheckError", (InputCheckError, base), {"__module__": __name__})
    except TypeError:  # an exception class whose layout cannot be combined
        return InputCheckError


def check(value: Any, expected: bool, where: str, kind: str = "") -> None:
    """Raise :class:`InputCheckError` (as ``kind``, :func:`error_class`) unless ``bool(value) ==
    expected`` (a graph node; see module doc)."""
    if bool(value) != expected:
        raise error_class(kind)(f"this input fails the model's own check {where}")


torch.fx.node._side_effectful_functions.add(check)  # kept by dead-code elimination: it has no users
_OWN_FILES = {str(Path(__file__).resolve().parent / "tracing.py"), str(Path(__file__).resolve())}
_FX_DIR = str(Path(fx.__file__).resolve().parent)
_SHOWN = 240  # characters of the original's raise statement quoted in a guard's error


def _user_frame() -> Any:
    frame = sys._getframe(1)
    while frame is not None:
        filename = str(Path(frame.f_code.co_filename).resolve()) if frame.f_code.co_filename else ""
        if filename not in _OWN_FILES and not filename.startswith(_FX_DIR):
            return frame
        frame = frame.f_back
    return None


def _raises_only(body: Sequence[ast.stmt]) -> bool:
    """A branch that computes a message and raises: simple statements ending in ``raise``."""
    simple = (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Expr, ast.Pass)
    return bool(body) and isinstance(body[-1], ast.Raise) and all(isinstance(s, simple) for s in body[:-1])


def _guarded_test(node: ast.stmt) -> tuple[ast.expr, bool] | None:
    """``(test, raises_when)`` of an input check: an ``assert``, or an ``if`` with a raise-only branch."""
    if isinstance(node, ast.Assert):
        return node.test, False
    if isinstance(node, ast.If):
        if _raises_only(node.body) and not _raises_only(node.orelse):
            return node.test, True
        if node.orelse and _raises_only(node.orelse) and not _raises_only(node.body):
            return node.test, False
    return None


def _decided_by_each_operand(test: ast.expr, raises_when: bool) -> bool:
    """Whether every operand Python evaluates decides the outcome (see the module doc)."""
    while isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        test, raises_when = test.operand, not raises_when
    if not isinstance(test, ast.BoolOp):
        return not any(isinstance(n, ast.BoolOp) for n in ast.walk(test))
    if any(isinstance(n, ast.BoolOp) for v in test.values for n in ast.walk(v)):
        return False
    # `a or b` raising when true: every operand is evaluated (all false) where it passes; dually `and`.
    return isinstance(test.op, ast.Or) == raises_when


def _raised(node: ast.stmt) -> tuple[str, str]:
    """What the check's raising branch raises: ``(exception name, its source)`` (an ``assert``:
    ``AssertionError``); the name is ``""`` where it is not a plain name."""
    if isinstance(node, ast.Assert):
        return "AssertionError", ast.unparse(node.msg) if node.msg is not None else ""
    assert isinstance(node, ast.If)
    branch = node.body if _raises_only(node.body) else node.orelse
    exc = branch[-1].exc if isinstance(branch[-1], ast.Raise) else None
    func = exc.func if isinstance(exc, ast.Call) else exc
    name = func.id if isinstance(func, ast.Name) else ""
    return name, ast.unparse(exc) if exc is not None else ""


def _check_at(frame: Any) -> tuple[str, str] | None:
    """``(where, exception name)``: the test, ``file:line`` and raise of the input check the frame
    is evaluating, or None when it is not one."""
    try:
        lines, start = inspect.getsourcelines(frame.f_code)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError):
        return None
    line = frame.f_lineno - max(start, 1) + 1
    found = None
    for node in ast.walk(tree):
        guarded = _guarded_test(node) if isinstance(node, ast.stmt) else None
        if guarded is None:
            continue
        test, _ = guarded
        if test.lineno <= line <= (test.end_lineno or test.lineno):
            if found is None or node.lineno >= found[0].lineno:
                found = (node, guarded)
    if found is None or not _decided_by_each_operand(*found[1]):
        return None
    file = str(Path(*Path(frame.f_code.co_filename).parts[-3:]))  # the last three parts, "/" kept where short
    kind, raised = _raised(found[0])
    raised = raised if len(raised) <= _SHOWN else raised[: _SHOWN - 3] + "..."
    if kind == "AssertionError":
        what = f"fails its assert{': ' + raised if raised else ''}"
    else:
        what = f"raises {raised}" if raised else "raises"
    line = found[0].lineno + max(start, 1) - 1
    return f"`{ast.unparse(found[1][0])}` ({file}:{line}), where the original {what}", kind


def _probe_value(tracer: fx.Tracer, node: fx.Node, probe: tuple[Any, ...]) -> Any:
    """``node``'s value at the probe: the graph traced so far, up to ``node``, run on ``probe``."""
    partial = fx.Graph()
    partial._codegen = copy.deepcopy(tracer.graph._codegen)
    env: dict[fx.Node, fx.Node] = {}
    for n in tracer.graph.nodes:
        env[n] = partial.node_copy(n, env.__getitem__)
        if n is node:
            break
    partial.output(env[node])
    # fx patches every module call while it traces: run the partial graph with the patches off.
    with _maybe_revert_all_patches(), torch.no_grad():
        return fx.GraphModule(tracer.root, partial)(*probe)


def guard_value(tracer: fx.Tracer, proxy: fx.Proxy, probe: tuple[Any, ...] | None) -> bool | None:
    """The probe's truth value of ``proxy`` with a :func:`check` node recorded, when the branch on it
    is an input check (see the module doc); None otherwise (the trace stops, as fx would)."""
    frame = _user_frame()
    found = _check_at(frame) if probe is not None and frame is not None else None
    if found is None:
        return None
    where, kind = found
    try:
        value = bool(_probe_value(tracer, proxy.node, probe))  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - any failure: not a value we can know, the trace stops as before
        return None
    tracer.create_proxy("call_function", check, (proxy, value, where, kind), {})
    return value
