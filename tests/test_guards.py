"""Input checks on traced values trace as guards: the graph keeps the model's check at every size,
and only checks whose every evaluated operand decides the outcome are guarded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import octswap
from octswap.errors import UntraceableError
from octswap.rewrite.graph.guards import InputCheckError
from octswap.rewrite.graph.tracing import trace
from tests.nets import size_checked_segmenter

SIZES = [(h, w) for h in (8, 12, 16, 20) for w in (8, 10, 12, 16, 20)]


class Checked(nn.Module):
    """A conv behind one of several input checks (``kind``), written as users write them."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.kind == "or":
            if h % 8 != 0 or w % 4 != 0:
                raise ValueError(f"bad size {h}x{w}")
        elif self.kind == "assert":
            assert h % 8 == 0, "height must be a multiple of 8"
        elif self.kind == "not":
            if not h <= 16:
                message = f"too tall: {h}"
                raise ValueError(message)
        elif self.kind == "else":
            if w % 4 == 0:
                pass
            else:
                raise ValueError("width")
        elif self.kind == "and":  # `a and b` before a raise: a short-circuit at the probe decides nothing
            if h % 8 != 0 and w % 8 != 0:
                raise ValueError("both")
        elif self.kind == "branch":  # neither branch raises: not a check
            if h > 12:
                x = x * 2
        return self.conv(x)


def _refused(model: nn.Module, h: int, w: int) -> type | None:
    """The type of the exception the model raises at ``h x w``, or None."""
    try:
        model(torch.randn(1, 3, h, w))
    except (ValueError, AssertionError, RuntimeError) as error:
        return type(error)
    return None


def _alike(eager: type | None, traced: type | None) -> bool:
    return eager is traced is None or (eager is not None and traced is not None and issubclass(traced, eager))


@pytest.mark.parametrize("kind", ["or", "assert", "not", "else"])
def test_a_check_traces_as_a_guard_that_refuses_what_the_model_refuses(kind):
    model = Checked(kind).eval()
    gm = trace(model, probe=(torch.randn(1, 3, 16, 16),))
    assert any("guards.check" in str(n.target) or getattr(n.target, "__name__", "") == "check" for n in gm.graph.nodes)
    with torch.no_grad():
        outcomes = {(h, w): (_refused(model, h, w), _refused(gm, h, w)) for h, w in SIZES}
    # the same sizes refused, with the same built-in exception (code catching the original's catches the guard's)
    assert all(_alike(eager, traced) for eager, traced in outcomes.values()), outcomes
    assert any(eager is not None for eager, _ in outcomes.values()), "the sizes include some the check refuses"
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))


@pytest.mark.parametrize("kind", ["and", "branch"])
def test_a_branch_that_is_not_a_decided_check_stops_the_trace(kind):
    with pytest.raises(UntraceableError, match="control flow"):
        trace(Checked(kind).eval(), probe=(torch.randn(1, 3, 16, 16),))


def test_without_the_probe_nothing_is_guarded():
    with pytest.raises(UntraceableError, match="control flow"):
        trace(Checked("or").eval())


def test_a_size_checked_segmenter_converts_whole_in_graph_mode(tmp_path):
    source = octswap.ModelSource(kind="import", name="tests.nets:size_checked_segmenter", kwargs={})
    model = size_checked_segmenter().eval()
    converted, plan = octswap.convert(model, alpha=0.5, input_shape=(3, 32, 32))
    assert plan.mode == "graph" and not plan.regions and not plan.boundaries
    with torch.no_grad():
        for h, w in ((32, 32), (36, 20), (64, 48)):
            assert converted(torch.randn(1, 3, h, w)).shape == model(torch.randn(1, 3, h, w)).shape
        with pytest.raises(RuntimeError, match="not divisible by 4"):
            model(torch.randn(1, 3, 30, 32))
        with pytest.raises(InputCheckError, match=r"nets\.py:\d+\), where the original raises RuntimeError\(f?'.*divisible"):
            converted(torch.randn(1, 3, 30, 32))
    path = octswap.save(tmp_path / "m.pt", converted, plan, source=source)
    loaded = octswap.load(path, model=source.build())
    x = torch.randn(1, 3, 40, 24)
    with torch.no_grad():
        assert torch.equal(loaded(x), converted(x))
