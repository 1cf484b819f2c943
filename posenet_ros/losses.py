"""PoseNet losses on raw network output ``pred (B, 7) = [x, y, z, qw, qx, qy, qz]``.

Both take the labels as ``pos (B, 3)`` (normalised like the network's position output) and
``quat (B, 4)`` wxyz (canonical w >= 0; normalised here again for safety), and return
``(loss, parts)`` where ``parts`` holds plain floats for logging.

* :class:`BetaLoss` - Kendall et al. 2015: ``||x_hat - x||_2 + beta * ||q_hat - q/||q|| ||_2``.
  As in the paper, the predicted quaternion is *not* normalised inside the loss.
* :class:`LearnedLoss` - Kendall & Cipolla 2017 homoscedastic weighting:
  ``L_x exp(-s_x) + s_x + L_q exp(-s_q) + s_q`` with learnable ``s_x``, ``s_q``. Give its
  parameters to the optimiser together with the network's.

Per-sample L2 norms are averaged over the batch.
"""

from __future__ import annotations

import torch
from torch import nn

from posenet_ros.errors import ConfigError

__all__ = ['BetaLoss', 'LearnedLoss', 'build_loss', 'pose_errors']


def pose_errors(pred: torch.Tensor, pos: torch.Tensor,
                quat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch means of ``||x_hat - x||_2`` and ``||q_hat - q/||q|| ||_2``."""
    if pred.dim() != 2 or pred.shape[1] != 7:
        raise ConfigError(f'pred must be (B, 7), got {tuple(pred.shape)}')
    if pos.shape != (pred.shape[0], 3) or quat.shape != (pred.shape[0], 4):
        raise ConfigError(f'labels must be pos (B, 3) and quat (B, 4) with B={pred.shape[0]}, '
                          f'got {tuple(pos.shape)} and {tuple(quat.shape)}')
    q = quat / quat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    l_x = (pred[:, :3] - pos).norm(dim=1).mean()
    l_q = (pred[:, 3:] - q).norm(dim=1).mean()
    return l_x, l_q


class BetaLoss(nn.Module):
    """``L_x + beta * L_q`` (PoseNet 2015; beta 500 outdoors, ~120-750 indoors)."""

    def __init__(self, beta: float = 500.0):
        super().__init__()
        if not float(beta) > 0:
            raise ConfigError(f'beta must be > 0, got {beta}')
        self.beta = float(beta)

    def forward(self, pred: torch.Tensor, pos: torch.Tensor,
                quat: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Return ``(loss, {'loss', 'l_x', 'l_q'})``."""
        l_x, l_q = pose_errors(pred, pos, quat)
        loss = l_x + self.beta * l_q
        return loss, {'loss': float(loss.detach()), 'l_x': float(l_x.detach()),
                      'l_q': float(l_q.detach())}


class LearnedLoss(nn.Module):
    """``L_x exp(-s_x) + s_x + L_q exp(-s_q) + s_q`` with learnable ``s_x``, ``s_q``."""

    def __init__(self, s_x: float = 0.0, s_q: float = -3.0):
        super().__init__()
        self.s_x = nn.Parameter(torch.tensor(float(s_x)))
        self.s_q = nn.Parameter(torch.tensor(float(s_q)))

    def forward(self, pred: torch.Tensor, pos: torch.Tensor,
                quat: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Return ``(loss, {'loss', 'l_x', 'l_q', 's_x', 's_q'})``."""
        l_x, l_q = pose_errors(pred, pos, quat)
        loss = l_x * torch.exp(-self.s_x) + self.s_x + l_q * torch.exp(-self.s_q) + self.s_q
        return loss, {'loss': float(loss.detach()), 'l_x': float(l_x.detach()),
                      'l_q': float(l_q.detach()), 's_x': float(self.s_x.detach()),
                      's_q': float(self.s_q.detach())}


def build_loss(kind: str, beta: float = 500.0, s_x: float = 0.0,
               s_q: float = -3.0) -> nn.Module:
    """``'beta'`` -> :class:`BetaLoss`, ``'learned'`` -> :class:`LearnedLoss`."""
    if kind == 'beta':
        return BetaLoss(beta)
    if kind == 'learned':
        return LearnedLoss(s_x=s_x, s_q=s_q)
    raise ConfigError(f"unknown loss {kind!r}; choose 'beta' or 'learned'")
