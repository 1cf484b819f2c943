"""What is optimised: the network, the loss, the optimiser, the LR schedule and the grad scaler.

:func:`build_learner` makes them once; :class:`Learner` takes one optimiser step and turns its
states into a checkpoint's entries and back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from posenet_ros.training.config import TrainConfig
from posenet_ros.training.data import TrainData
from posenet_ros.training.distributed import Distributed
from posenet_ros.training.schedule import (
    SchedulePlan,
    build_optimizer,
    build_scheduler,
    warmup_steps,
)

__all__ = ['TrainStep', 'Learner', 'build_learner']

log = logging.getLogger(__name__)

#: Checkpoint entries of :meth:`Learner.state_dict`, in the order they are written.
_STATES = ('model', 'loss', 'optimizer', 'scheduler', 'scaler')


class TrainStep(nn.Module):
    """Network + loss in one module, so DDP all-reduces the learned loss's s_x/s_q too."""

    def __init__(self, net: nn.Module, loss: nn.Module):
        super().__init__()
        self.net = net
        self.loss = loss

    def forward(self, x: torch.Tensor, pos: torch.Tensor, quat: torch.Tensor):
        """Weighted loss over the network's training outputs; the main output's parts."""
        total = None
        parts: dict = {}
        for i, (weight, out) in enumerate(self.net.forward_train(x)):
            # the loss in float32 even under autocast
            value, p = self.loss(out.float(), pos, quat)
            total = weight * value if total is None else total + weight * value
            if i == 0:
                parts = p
        return total, parts


@dataclass
class Learner:
    """The network and everything that updates it."""

    net: nn.Module
    loss_fn: nn.Module
    module: nn.Module  # TrainStep, wrapped in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    plan: SchedulePlan  # the epochs the schedule spans (fitted by a time budget)
    warm: int  # warm-up steps
    use_amp: bool
    grad_clip: float

    def step(self, x: torch.Tensor, pos: torch.Tensor, quat: torch.Tensor):
        """One optimiser and scheduler step; ``(loss, parts)`` of the batch."""
        with torch.autocast(device_type=x.device.type, dtype=torch.float16,
                            enabled=self.use_amp):
            loss, parts = self.module(x, pos, quat)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss, parts

    @property
    def steps_taken(self) -> int:
        """Scheduler steps taken so far (all epochs)."""
        return self.scheduler.last_epoch

    @property
    def lr(self) -> float:
        """The network's current learning rate."""
        return self.optimizer.param_groups[0]['lr']

    def train_mode(self, freeze_bn: bool) -> None:
        """Training mode; with ``freeze_bn`` BatchNorm layers stay in inference mode."""
        self.net.train()
        if freeze_bn:
            # Normalised with the pretrained running statistics, which stay fixed (no batch
            # statistics of a few near-identical frames; what is trained is also what the
            # export computes). evaluate_cached restores these per-module modes.
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def state_dict(self) -> dict:
        """The checkpoint entries ``model``, ``loss``, ``optimizer``, ``scheduler``, ``scaler``."""
        objects = (self.net, self.loss_fn, self.optimizer, self.scheduler, self.scaler)
        return {key: obj.state_dict() for key, obj in zip(_STATES, objects)}

    def load_state_dict(self, ckpt: dict) -> None:
        """Restore the states :meth:`state_dict` wrote."""
        objects = (self.net, self.loss_fn, self.optimizer, self.scheduler, self.scaler)
        for key, obj in zip(_STATES, objects):
            obj.load_state_dict(ckpt[key])


def build_learner(cfg: TrainConfig, data: TrainData, steps_per_epoch: int, device: torch.device,
                  dist: Distributed) -> Learner:
    """Network, loss, optimiser and schedule, the same initial weights on every rank."""
    from torch.nn.parallel import DistributedDataParallel

    from posenet_ros.model.network import build_posenet
    from posenet_ros.training.losses import build_loss

    torch.manual_seed(cfg.seed)  # same head initialisation on every rank
    net = build_posenet(cfg.backbone, cfg.pretrained, cfg.dropout).to(device)
    # beta is in the paper's units (metres vs quaternion); on positions divided by pos_scale
    # the same balance needs beta / pos_scale.
    loss_fn = build_loss(cfg.loss, cfg.beta / data.pos_scale, cfg.s_x_init, cfg.s_q_init,
                         quat_loss=cfg.quat_loss, quat_ref=data.quat_ref).to(device)
    module: nn.Module = TrainStep(net, loss_fn)
    optimizer = build_optimizer(cfg, net, loss_fn)
    plan = SchedulePlan(None if cfg.time_budget else cfg.epochs)
    use_amp = cfg.amp and device.type == 'cuda'
    if dist.enabled:
        module = DistributedDataParallel(
            module, device_ids=[device.index] if device.type == 'cuda' else None)
    return Learner(net=net, loss_fn=loss_fn, module=module, optimizer=optimizer,
                   scheduler=build_scheduler(cfg, optimizer, steps_per_epoch, plan),
                   scaler=torch.amp.GradScaler('cuda', enabled=use_amp), plan=plan,
                   warm=warmup_steps(cfg, steps_per_epoch), use_amp=use_amp,
                   grad_clip=cfg.grad_clip)
