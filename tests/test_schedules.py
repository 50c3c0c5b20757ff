"""The step-decay schedule against torch's MultiStepLR stepped once per epoch, as the authors' loop does."""

from __future__ import annotations

import pytest
import torch

from ast_hf.training.schedules import get_step_decay_schedule, step_decay_factor


@pytest.mark.parametrize("start,every,factor", [(2, 1, 0.5), (5, 1, 0.85), (10, 5, 0.5), (0, 2, 0.1)])
def test_matches_authors_multisteplr_per_epoch(start, every, factor):
    base, steps_per_epoch, epochs = 1e-3, 7, 30
    param = torch.nn.Parameter(torch.zeros(1))
    theirs_opt = torch.optim.SGD([param], lr=base)
    theirs = torch.optim.lr_scheduler.MultiStepLR(theirs_opt, list(range(start, 1000, every)), gamma=factor)
    ours_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    ours = get_step_decay_schedule(ours_opt, steps_per_epoch, start, every, factor)
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            assert ours_opt.param_groups[0]["lr"] == pytest.approx(theirs_opt.param_groups[0]["lr"], rel=1e-12)
            ours_opt.step()
            ours.step()
        theirs_opt.step()
        theirs.step()


def test_warmup_ramps_linearly_then_hands_over():
    values = [step_decay_factor(s, 100, decay_start=2, decay_factor=0.5, warmup_steps=50) for s in range(300)]
    assert values[0] == pytest.approx(1 / 50) and values[24] == pytest.approx(25 / 50)
    assert values[49] == 1.0 and values[99] == 1.0
    assert values[200] == 0.5 and values[299] == 0.5


def test_bad_arguments():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        step_decay_factor(0, 0, 1)


@pytest.mark.parametrize("arguments, problem", [({"decay_factor": 0.0}, "decay_factor > 0"),
                                                ({"decay_factor": -0.5}, "decay_factor > 0"),
                                                ({"warmup_steps": -1}, "warmup_steps >= 0")])
def test_a_factor_or_warm_up_that_is_no_schedule_is_refused(arguments, problem):
    with pytest.raises(ValueError, match=problem):
        step_decay_factor(0, 100, 2, **arguments)
