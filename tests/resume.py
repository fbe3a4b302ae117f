"""Heal once whole and once interrupted then resumed, for the tests that both must agree."""

from __future__ import annotations

import copy

import pytest
import torch

from octswap.distillation import HealInterrupted, HealOptions, heal


def assert_resumes_exactly(converted, teacher, data, options: HealOptions, *, stop_at: int, where: str) -> None:
    """Heal ``converted`` whole; heal it again, stopped after step ``stop_at`` (the interruption's
    message matching ``where``), and resume from what was saved: the weights must agree."""
    whole = heal(converted, teacher, data, options=options).model.state_dict()
    saved = {}

    def keep(model, state):
        saved["weights"], saved["state"] = copy.deepcopy(model.state_dict()), copy.deepcopy(state)

    steps = iter(range(100))
    with pytest.raises(HealInterrupted, match=where):
        heal(converted, teacher, data, options=options, save=keep, stop=lambda: next(steps) == stop_at)
    student = copy.deepcopy(converted)
    student.load_state_dict(saved["weights"])
    resumed = heal(student, teacher, data, options=options, resume=saved["state"])
    for key, value in resumed.model.state_dict().items():
        assert torch.allclose(value.float(), whole[key].float(), atol=1e-6), key
