"""Both PoseNet losses against hand computations."""

import math

import pytest
import torch

from posenet_ros.errors import ConfigError
from posenet_ros.losses import BetaLoss, LearnedLoss, build_loss


def _batch():
    pred = torch.tensor([[1.0, 2.0, 2.0, 1.0, 0.0, 0.0, 0.0],     # |dx| = 3, q exact
                         [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])    # |dx| = 0
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # second label is not unit (norm 2): the loss compares against q / ||q|| = (1, 0, 0, 0)
    quat = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    return pred, pos, quat


def test_beta_loss_by_hand():
    pred, pos, quat = _batch()
    loss, parts = BetaLoss(beta=10.0)(pred, pos, quat)
    l_x = (3.0 + 0.0) / 2
    l_q = (0.0 + math.sqrt(2.0)) / 2  # ||(0,0,0,1) - (1,0,0,0)|| = sqrt(2)
    assert parts['l_x'] == pytest.approx(l_x)
    assert parts['l_q'] == pytest.approx(l_q)
    assert float(loss) == pytest.approx(l_x + 10.0 * l_q)
    assert parts['loss'] == pytest.approx(float(loss))


def test_learned_loss_by_hand_and_gradients():
    pred, pos, quat = _batch()
    pred.requires_grad_(True)
    crit = LearnedLoss(s_x=0.5, s_q=-3.0)
    loss, parts = crit(pred, pos, quat)
    l_x, l_q = 1.5, math.sqrt(2.0) / 2
    expected = l_x * math.exp(-0.5) + 0.5 + l_q * math.exp(3.0) - 3.0
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    assert parts['s_x'] == pytest.approx(0.5) and parts['s_q'] == pytest.approx(-3.0)
    loss.backward()
    # d/ds_x = -L_x exp(-s_x) + 1, d/ds_q = -L_q exp(-s_q) + 1
    assert float(crit.s_x.grad) == pytest.approx(1 - l_x * math.exp(-0.5), rel=1e-6)
    assert float(crit.s_q.grad) == pytest.approx(1 - l_q * math.exp(3.0), rel=1e-6)
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert {n for n, _ in crit.named_parameters()} == {'s_x', 's_q'}


def test_build_loss_and_validation():
    assert isinstance(build_loss('beta', beta=250.0), BetaLoss)
    assert build_loss('beta', beta=250.0).beta == 250.0
    learned = build_loss('learned')
    assert isinstance(learned, LearnedLoss)
    assert float(learned.s_x.detach()) == 0.0 and float(learned.s_q.detach()) == -3.0
    with pytest.raises(ConfigError, match="'beta' or 'learned'"):
        build_loss('l1')
    with pytest.raises(ConfigError):
        BetaLoss(beta=0.0)
    with pytest.raises(ConfigError, match=r'\(B, 7\)'):
        BetaLoss()(torch.zeros(2, 6), torch.zeros(2, 3), torch.ones(2, 4))
