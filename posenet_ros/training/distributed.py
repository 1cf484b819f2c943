"""One process or many under ``torchrun``: the trainer's distributed (DDP) helpers.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`init_distributed` joins
the process group (NCCL on GPUs, gloo on CPUs) and picks the device. :class:`Distributed` wraps
the few collectives the trainer needs so that, on a single process, each is a plain no-op and
the training loop reads the same either way. Rank 0 decides whatever depends on a clock or a
callback (time budget, early stop); the other ranks follow its decision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from posenet_ros.core.errors import ConfigError
from posenet_ros.training.config import TrainConfig

__all__ = ['Distributed', 'init_distributed', 'resolve_device']


@dataclass
class Distributed:
    """The place of this process among the training processes, and the collectives it joins.

    ``device``: where collective tensors live (the training device under DDP: NCCL needs CUDA
    tensors; the CPU on a single process).
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False  # this process created the group, so it destroys it
    device: torch.device = field(default_factory=lambda: torch.device('cpu'))

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs, validates, writes checkpoints and exports."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process."""
        if self.enabled:
            dist.barrier()

    def any(self, *flags: bool) -> list[bool]:
        """Each flag or-ed over all processes (every rank stops, or none does)."""
        if not self.enabled:
            return [bool(f) for f in flags]
        t = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [v > 0 for v in t.tolist()]

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value`` on every rank (plans made from rank 0's clock)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.broadcast(t, 0)
        return int(t.item())

    def mean(self, values: list[float]) -> list[float]:
        """The mean of each value over all processes."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order (``[obj]`` on a single process)."""
        if not self.enabled:
            return [obj]
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def sync_buffers(self, net: nn.Module) -> None:
        """Give every rank rank 0's buffers.

        DDP keeps parameters in sync; BatchNorm running statistics are only broadcast at the
        next forward, so after the last step they may differ.
        """
        if self.enabled:
            for buf in net.buffers():
                dist.broadcast(buf, 0)

    def close(self) -> None:
        """Leave the process group if this process created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(cfg: TrainConfig, local_rank: int = 0, distributed: bool = False
                   ) -> torch.device:
    """The training device of ``cfg.device``; under torchrun one GPU per process."""
    from posenet_ros.model.relocalizer import resolve_device as resolve

    device = resolve(cfg.device)
    if device.type == 'cuda' and distributed and cfg.device in ('auto', 'cuda'):
        device = torch.device('cuda', local_rank)
    return device


def init_distributed(cfg: TrainConfig) -> tuple[Distributed, torch.device]:
    """Join the ``torchrun`` process group when ``WORLD_SIZE`` > 1; the training device."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        return Distributed(), resolve_device(cfg)
    try:
        int(os.environ['RANK'])
        local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    except (KeyError, ValueError):
        raise ConfigError('WORLD_SIZE > 1 but RANK/LOCAL_RANK are not set: launch distributed '
                          'training with torchrun (it sets them)') from None
    device = resolve_device(cfg, local_rank, True)
    owns = False
    if not dist.is_initialized():
        if device.type == 'cuda':
            torch.cuda.set_device(device)
        dist.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo')
        owns = True
    return Distributed(dist.get_world_size(), dist.get_rank(), local_rank, owns, device), device
