"""PoseNet losses on raw network output ``pred (B, 7) = [x, y, z, qw, qx, qy, qz]``.

Both take the labels as ``pos (B, 3)`` (normalised like the network's position output) and
``quat (B, 4)`` wxyz (any sign; normalised here again for safety), and return
``(loss, parts)`` where ``parts`` holds plain floats for logging.

* :class:`BetaLoss` - Kendall et al. 2015: ``||x_hat - x||_2 + beta * ||q_hat - q/||q|| ||_2``.
  As in the paper, the predicted quaternion is *not* normalised inside the loss.
* :class:`LearnedLoss` - Kendall & Cipolla 2017 homoscedastic weighting:
  ``L_x exp(-s_x) + s_x + L_q exp(-s_q) + s_q`` with learnable ``s_x``, ``s_q``. Give its
  parameters to the optimiser in their own group (``posenet_ros.training.train`` uses ``loss_lr``).

q and -q are the same rotation, but an L2 distance to a fixed-sign label is not: with labels
canonicalised to w >= 0, views on either side of ``w = 0`` get far-apart targets (a seam). Two
remedies, selectable on both losses and combinable:

* ``quat_loss='sign_invariant'``: ``min(||q_hat - q||, ||q_hat + q||)`` per sample;
* ``quat_ref`` (4,) wxyz: each label is flipped into the hemisphere ``<q, quat_ref> >= 0``
  before the L2 distance (a per-scene reference, e.g. the training labels' chordal mean,
  :func:`posenet_ros.core.geometry.mean_quaternion`). It is a buffer, so it is saved with the
  loss's state in checkpoints.

Per-sample norms are averaged over the batch.
"""

from __future__ import annotations

import torch
from torch import nn

from posenet_ros.core.errors import ConfigError
from posenet_ros.training.config import QUAT_LOSSES

__all__ = ['BetaLoss', 'LearnedLoss', 'build_loss', 'pose_errors', 'QUAT_LOSSES']


def pose_errors(pred: torch.Tensor, pos: torch.Tensor, quat: torch.Tensor,
                sign_invariant: bool = False,
                quat_ref: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch means of ``||x_hat - x||_2`` and ``||q_hat - q/||q|| ||_2``.

    ``sign_invariant``: the rotation term is ``min(||q_hat - q||, ||q_hat + q||)``.
    ``quat_ref`` (4,): labels are first flipped to ``<q, quat_ref> >= 0``.
    """
    if pred.dim() != 2 or pred.shape[1] != 7:
        raise ConfigError(f'pred must be (B, 7), got {tuple(pred.shape)}')
    if pos.shape != (pred.shape[0], 3) or quat.shape != (pred.shape[0], 4):
        raise ConfigError(f'labels must be pos (B, 3) and quat (B, 4) with B={pred.shape[0]}, '
                          f'got {tuple(pos.shape)} and {tuple(quat.shape)}')
    q = quat / quat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if quat_ref is not None:
        q = torch.where((q @ quat_ref.to(q.dtype)).unsqueeze(1) < 0, -q, q)
    l_x = (pred[:, :3] - pos).norm(dim=1).mean()
    q_hat = pred[:, 3:]
    d_q = (q_hat - q).norm(dim=1)
    if sign_invariant:
        d_q = torch.minimum(d_q, (q_hat + q).norm(dim=1))
    return l_x, d_q.mean()


class _PoseLoss(nn.Module):
    """Shared rotation-target options of both losses (see the module docstring)."""

    def __init__(self, quat_loss: str = 'l2', quat_ref=None):
        super().__init__()
        if quat_loss not in QUAT_LOSSES:
            raise ConfigError(f'unknown quat_loss {quat_loss!r}; choose one of '
                              f'{", ".join(QUAT_LOSSES)}')
        self.quat_loss = quat_loss
        ref = None
        if quat_ref is not None:
            ref = torch.as_tensor(quat_ref, dtype=torch.float32).reshape(-1)
            if ref.numel() != 4 or not bool(torch.isfinite(ref).all()) or float(ref.norm()) < 1e-6:
                raise ConfigError(f'quat_ref must be a non-zero finite wxyz quaternion, got '
                                  f'{ref.tolist()}')
            ref = ref / ref.norm()
        self.register_buffer('quat_ref', ref)  # None: not part of the state dict

    def errors(self, pred, pos, quat):
        return pose_errors(pred, pos, quat, sign_invariant=self.quat_loss == 'sign_invariant',
                           quat_ref=self.quat_ref)


class BetaLoss(_PoseLoss):
    """``L_x + beta * L_q`` (PoseNet 2015; beta 500 outdoors, ~120-750 indoors)."""

    def __init__(self, beta: float = 500.0, quat_loss: str = 'l2', quat_ref=None):
        super().__init__(quat_loss, quat_ref)
        if not float(beta) > 0:
            raise ConfigError(f'beta must be > 0, got {beta}')
        self.beta = float(beta)

    def forward(self, pred: torch.Tensor, pos: torch.Tensor,
                quat: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Return ``(loss, {'loss', 'l_x', 'l_q'})``."""
        l_x, l_q = self.errors(pred, pos, quat)
        loss = l_x + self.beta * l_q
        return loss, {'loss': float(loss.detach()), 'l_x': float(l_x.detach()),
                      'l_q': float(l_q.detach())}


class LearnedLoss(_PoseLoss):
    """``L_x exp(-s_x) + s_x + L_q exp(-s_q) + s_q`` with learnable ``s_x``, ``s_q``."""

    def __init__(self, s_x: float = 0.0, s_q: float = -3.0, quat_loss: str = 'l2',
                 quat_ref=None):
        super().__init__(quat_loss, quat_ref)
        self.s_x = nn.Parameter(torch.tensor(float(s_x)))
        self.s_q = nn.Parameter(torch.tensor(float(s_q)))

    def forward(self, pred: torch.Tensor, pos: torch.Tensor,
                quat: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Return ``(loss, {'loss', 'l_x', 'l_q', 's_x', 's_q'})``."""
        l_x, l_q = self.errors(pred, pos, quat)
        loss = l_x * torch.exp(-self.s_x) + self.s_x + l_q * torch.exp(-self.s_q) + self.s_q
        return loss, {'loss': float(loss.detach()), 'l_x': float(l_x.detach()),
                      'l_q': float(l_q.detach()), 's_x': float(self.s_x.detach()),
                      's_q': float(self.s_q.detach())}


def build_loss(kind: str, beta: float = 500.0, s_x: float = 0.0, s_q: float = -3.0,
               quat_loss: str = 'l2', quat_ref=None) -> nn.Module:
    """``'beta'`` -> :class:`BetaLoss`, ``'learned'`` -> :class:`LearnedLoss`.

    ``quat_loss`` ('l2' or 'sign_invariant') and ``quat_ref`` (None or a wxyz reference whose
    hemisphere the labels are put in) choose the rotation target of either loss.
    """
    if kind == 'beta':
        return BetaLoss(beta, quat_loss=quat_loss, quat_ref=quat_ref)
    if kind == 'learned':
        return LearnedLoss(s_x=s_x, s_q=s_q, quat_loss=quat_loss, quat_ref=quat_ref)
    raise ConfigError(f"unknown loss {kind!r}; choose 'beta' or 'learned'")
