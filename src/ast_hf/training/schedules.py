"""Learning-rate schedules of the AST recipes: linear warm-up, then the authors' step decay.

The authors multiply the learning rate by `decay_factor` at the end of epochs `decay_start`,
`decay_start + decay_every`, ... (`MultiStepLR(milestones=range(start, 1000, step), gamma=factor)`, stepped
once per epoch), e.g. AudioSet: start 2, every 1, factor 0.5; ESC-50 and Speech Commands: 5, 1, 0.85.
`Trainer` steps its scheduler once per optimizer step, so this scheduler counts steps and converts them to
epochs with `steps_per_epoch`; the result is the same step function of the epoch.
"""

from __future__ import annotations

import torch


def step_decay_factor(step: int, steps_per_epoch: int, decay_start: int, decay_every: int = 1,
                      decay_factor: float = 0.5, warmup_steps: int = 0) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based).

    Epoch e = step // steps_per_epoch (0-based) runs at factor ** n, n = number of milestones m = decay_start,
    decay_start + decay_every, ... with m <= e. During the first `warmup_steps` steps the rate also ramps
    linearly, (step + 1) / warmup_steps (the authors ramp their first 1000 AudioSet steps).
    """
    if steps_per_epoch < 1 or decay_every < 1 or decay_start < 0:
        raise ValueError(f"need steps_per_epoch >= 1, decay_every >= 1 and decay_start >= 0; got {steps_per_epoch}, "
                         f"{decay_every}, {decay_start}")
    if not decay_factor > 0 or warmup_steps < 0:
        raise ValueError(f"need decay_factor > 0 and warmup_steps >= 0; got {decay_factor}, {warmup_steps}")
    epoch = step // steps_per_epoch
    decays = 0 if epoch < decay_start else (epoch - decay_start) // decay_every + 1
    factor = decay_factor ** decays
    if warmup_steps > 0 and step < warmup_steps:
        factor *= (step + 1) / warmup_steps
    return factor


def get_step_decay_schedule(optimizer: torch.optim.Optimizer, steps_per_epoch: int, decay_start: int,
                            decay_every: int = 1, decay_factor: float = 0.5, warmup_steps: int = 0,
                            last_epoch: int = -1) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` stepped once per optimizer step with `step_decay_factor`; pass it to
    `Trainer(optimizers=(optimizer, scheduler))`, or let `ASTTrainer` build it from `ASTTrainingArguments`."""

    def factor(step: int) -> float:
        return step_decay_factor(step, steps_per_epoch, decay_start, decay_every, decay_factor, warmup_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=last_epoch)


__all__ = ["step_decay_factor", "get_step_decay_schedule"]
