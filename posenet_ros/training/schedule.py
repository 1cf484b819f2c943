"""The optimiser and the per-step learning-rate schedule (and the plan it spans).

The schedule is a :class:`torch.optim.lr_scheduler.LambdaLR` stepped after every optimiser
step: a linear warm-up over ``warmup_epochs``, then ``cosine`` (down to ``min_lr_ratio``),
``step`` (times ``gamma`` every ``step_epochs``) or ``none``. The cosine's length is read from a
:class:`SchedulePlan` at every step, so a time budget (:mod:`posenet_ros.training.budget`) can
fit it, and re-fit it, while training runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from posenet_ros.training.config import TrainConfig

__all__ = ['SchedulePlan', 'lr_lambda', 'warmup_steps', 'build_optimizer', 'build_scheduler']


@dataclass
class SchedulePlan:
    """The epoch count the LR schedule spans; ``None`` while a time budget is being measured.

    A mutable holder read by :func:`lr_lambda` at every step, so the time budget can fit and
    re-fit the schedule (not a callable object: LambdaLR would pickle its attributes). A
    re-fit at step ``anchor_step`` keeps the cosine's progress there (``anchor_frac``) and
    spreads the rest over the new length: the learning rate stays continuous and still ends
    at its floor. Without a re-fit (no time budget) this is the plain cosine over ``epochs``.
    """

    epochs: int | None
    anchor_step: int | None = None
    anchor_frac: float = 0.0

    def frac(self, step: int, warm: int, steps_per_epoch: int) -> float:
        """Cosine progress in [0, 1] at ``step`` (after warm-up)."""
        total = max(1, self.epochs * steps_per_epoch)
        if self.anchor_step is None or self.anchor_step <= warm and self.anchor_frac == 0.0:
            return min(1.0, (step - warm) / max(1, total - warm))
        s0 = max(self.anchor_step, warm)
        return min(1.0, self.anchor_frac + (1.0 - self.anchor_frac) * (step - s0)
                   / max(1, total - s0))

    def refit(self, epochs: int, step: int, warm: int, steps_per_epoch: int) -> None:
        """Span ``epochs`` from now on (``step``: scheduler steps taken so far)."""
        frac = (0.0 if self.epochs is None or step <= warm
                else self.frac(step, warm, steps_per_epoch))
        self.epochs, self.anchor_step, self.anchor_frac = int(epochs), int(step), float(frac)

    def to_dict(self) -> dict:
        """What a checkpoint stores."""
        return {'epochs': self.epochs, 'anchor_step': self.anchor_step,
                'anchor_frac': self.anchor_frac}

    def restore(self, stored: dict) -> None:
        """Take the plan a checkpoint stored (:meth:`to_dict`)."""
        self.epochs = int(stored['epochs'])
        self.anchor_step = stored.get('anchor_step')
        self.anchor_frac = float(stored.get('anchor_frac') or 0.0)


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Optimiser steps of the linear warm-up."""
    return int(round(cfg.warmup_epochs * steps_per_epoch))


def lr_lambda(cfg: TrainConfig, steps_per_epoch: int, plan: SchedulePlan | None = None):
    """The LambdaLR factor of scheduler step ``step`` (a closure over ``plan``)."""
    warm = warmup_steps(cfg, steps_per_epoch)
    plan = SchedulePlan(cfg.epochs) if plan is None else plan

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == 'cosine':
            if plan.epochs is None:  # the time budget's measuring epoch: peak rate
                return 1.0
            frac = plan.frac(step, warm, steps_per_epoch)
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(
                math.pi * frac))
        if cfg.schedule == 'step':
            return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_epochs)
        return 1.0

    return factor


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                    plan: SchedulePlan) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step schedule of every parameter group, spanning ``plan``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps_per_epoch, plan))


def build_optimizer(cfg: TrainConfig, net: nn.Module, loss: nn.Module
                    ) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over the network and the loss's learnable weights."""
    # The learned loss weights s_x/s_q get their own group: no weight decay (it would pull them
    # towards 0) and their own lr (Adam moves a parameter by about lr per step, so with the
    # network's lr they could barely leave their start values).
    groups = [{'params': [p for p in net.parameters() if p.requires_grad],
               'weight_decay': cfg.weight_decay}]
    loss_params = [p for p in loss.parameters() if p.requires_grad]
    if loss_params:
        groups.append({'params': loss_params, 'weight_decay': 0.0,
                       'lr': cfg.lr if cfg.loss_lr is None else cfg.loss_lr})
    if cfg.optimizer == 'adam':
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == 'adamw':
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
