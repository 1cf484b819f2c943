"""Both PoseNet losses against hand computations; seam-free rotation targets; loss_lr."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_model import one_torch_thread  # noqa: F401 (fixture)

from posenet_ros.core.errors import ConfigError
from posenet_ros.core.geometry import (
    canonicalize_quaternion,
    mean_quaternion,
    normalize_quaternion,
    quat_to_matrix,
    rotation_error_deg,
    to_hemisphere,
)
from posenet_ros.datasets import load_dataset
from posenet_ros.training.checkpoint import load_checkpoint
from posenet_ros.training.config import load_config
from posenet_ros.training.losses import BetaLoss, LearnedLoss, build_loss


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


# --- rotation targets without a seam ---------------------------------------------------------
def _random_quats(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return q / q.norm(dim=1, keepdim=True)


@pytest.mark.parametrize('kind', ['beta', 'learned'])
def test_sign_invariant_loss_same_at_q_and_minus_q(kind):
    q = _random_quats(16).float()
    pred = torch.cat([torch.zeros(16, 3), q + 0.1 * _random_quats(16, seed=1).float()], dim=1)
    pos = torch.zeros(16, 3)
    signs = torch.where(torch.arange(16) % 3 == 0, -1.0, 1.0).unsqueeze(1)  # some labels flipped
    values, grads = [], []
    for labels in (q, -q, q * signs):
        p = pred.clone().requires_grad_(True)
        loss, parts = build_loss(kind, beta=10.0, quat_loss='sign_invariant')(p, pos, labels)
        loss.backward()
        values.append(parts['l_q'])
        grads.append(p.grad.clone())
    assert values[0] == pytest.approx(values[1], abs=1e-7) == pytest.approx(values[2], abs=1e-7)
    assert torch.allclose(grads[0], grads[1]) and torch.allclose(grads[0], grads[2])
    # sane gradient: finite, and a small step against it moves q_hat towards the nearer of +-q
    g_q = grads[0][:, 3:]
    assert torch.isfinite(g_q).all() and g_q.norm(dim=1).min() > 0
    stepped = pred[:, 3:] - 1e-2 * g_q / g_q.norm(dim=1, keepdim=True)
    assert ((stepped - q).norm(dim=1) < (pred[:, 3:] - q).norm(dim=1)).all()
    # the PoseNet L2 term is not sign-invariant: this test would catch a no-op change
    l2 = [build_loss(kind, beta=10.0, quat_loss='l2')(pred, pos, lab)[1]['l_q'] for lab in (q, -q)]
    assert l2[1] > l2[0] + 1.0
    assert values[0] == pytest.approx(l2[0], abs=1e-6)  # prediction near +q: min picks +q


def test_sign_invariant_loss_by_hand():
    pred = torch.tensor([[0.0, 0.0, 0.0, -0.9, 0.0, 0.0, 0.0]])  # -0.9 * identity
    pos = torch.zeros(1, 3)
    quat = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    _, parts = BetaLoss(1.0, quat_loss='sign_invariant')(pred, pos, quat)
    assert parts['l_q'] == pytest.approx(0.1)  # ||-0.9 - (-1)|| rather than ||-0.9 - 1|| = 1.9
    _, parts = BetaLoss(1.0, quat_loss='l2')(pred, pos, quat)
    assert parts['l_q'] == pytest.approx(1.9)


def test_reference_hemisphere_keeps_rotations_and_one_hemisphere():
    rng = np.random.default_rng(0)
    centre = normalize_quaternion(np.array([0.2, 0.6, -0.7, 0.3]))
    # labels scattered up to ~+-70 deg around centre, with random signs (w >= 0 and w < 0)
    noise = rng.normal(scale=0.3, size=(200, 4))
    q = normalize_quaternion(centre + noise) * rng.choice([-1.0, 1.0], size=(200, 1))
    q_ref = mean_quaternion(q)
    assert q_ref[0] >= 0 and abs(np.linalg.norm(q_ref) - 1) < 1e-12
    assert rotation_error_deg(q_ref, centre) < 10.0
    assert rotation_error_deg(mean_quaternion(-q), q_ref) < 1e-6  # sign-blind
    flipped = to_hemisphere(q, q_ref)
    assert np.all(flipped @ q_ref >= 0)
    assert np.any(np.sign(flipped[:, 0]) != np.sign(q[:, 0]))  # some labels were flipped
    for a, b in zip(q, flipped):
        np.testing.assert_allclose(quat_to_matrix(a), quat_to_matrix(b), atol=1e-12)
    # the loss with this reference sees the same target for q and -q
    pred = torch.cat([torch.zeros(200, 3), torch.from_numpy(flipped).float()], dim=1)
    crit = build_loss('learned', quat_loss='l2', quat_ref=q_ref)
    for labels in (q, -q, canonicalize_quaternion(q)):
        _, parts = crit(pred, torch.zeros(200, 3), torch.from_numpy(labels).float())
        assert parts['l_q'] == pytest.approx(0.0, abs=1e-6)
    assert 'quat_ref' in crit.state_dict()  # saved in checkpoints with the loss
    assert 'quat_ref' not in build_loss('learned').state_dict()
    with pytest.raises(ConfigError, match='quat_ref'):
        build_loss('beta', quat_ref=[0.0, 0.0, 0.0, 0.0])
    with pytest.raises(ConfigError, match='sign_invariant, l2'):
        build_loss('beta', quat_loss='l1')


# --- loss weights with their own learning rate -----------------------------------------------
def test_loss_lr_gives_s_x_s_q_their_own_group():
    from posenet_ros.training.schedule import build_optimizer, lr_lambda

    net = torch.nn.Linear(3, 7)
    for optimizer in ('adam', 'adamw', 'sgd'):
        cfg = load_config(None, {'lr': 1e-4, 'loss_lr': 1e-2, 'weight_decay': 1e-3,
                                 'optimizer': optimizer, 'epochs': 4})
        loss = build_loss('learned')
        opt = build_optimizer(cfg, net, loss)
        net_group, loss_group = opt.param_groups
        assert {id(p) for p in loss_group['params']} == {id(loss.s_x), id(loss.s_q)}
        assert loss_group['lr'] == 1e-2 and loss_group['weight_decay'] == 0.0
        assert net_group['lr'] == 1e-4 and net_group['weight_decay'] == 1e-3
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, 10))
        for _ in range(20):
            opt.step()
            sched.step()
        # the same schedule scales both groups
        assert loss_group['lr'] / net_group['lr'] == pytest.approx(100.0)
    cfg = load_config(None, {'lr': 3e-4, 'loss_lr': None})
    _, loss_group = build_optimizer(cfg, net, build_loss('learned')).param_groups
    assert loss_group['lr'] == 3e-4 and loss_group['weight_decay'] == 0.0
    assert len(build_optimizer(cfg, net, build_loss('beta')).param_groups) == 1


@pytest.mark.parametrize('key, value, fragment', [
    ('loss_lr', -1.0, 'must be > 0'),
    ('loss_lr', 'nan', 'must be > 0'),
    ('quat_loss', 'l1', 'sign_invariant, l2'),
    ('quat_hemisphere', 'north', 'reference, canonical'),
])
def test_rotation_and_loss_lr_keys_are_checked(key, value, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, {key: value})
    assert key in str(err.value) and fragment in str(err.value)


@pytest.mark.slow
def test_short_training_moves_s_q_and_records_the_reference(tmp_path, one_torch_thread):  # noqa: F811
    """With loss_lr, s_q leaves its start by far more than the network's lr allows.

    Adam moves a parameter by at most about lr per step (bias-corrected m / sqrt(v) <= ~1), so
    with a shared lr of 1e-4 the 3 x 6 = 18 steps here could move s_q by about 0.002.
    """
    from helpers_data import render_tiny_scene

    from posenet_ros.model.export import read_metadata
    from posenet_ros.training.train import train

    ds = render_tiny_scene(tmp_path, n_train=24, n_test=4, width=48, height=40)
    common = dict(dataset=str(ds), backbone='mobilenet_v3_small', pretrained=None, resize=40,
                  crop=32, epochs=3, batch_size=4, lr=1e-4, num_threads=1, progress=False,
                  val_split=None, s_q_init=-3.0, quat_loss='sign_invariant',
                  quat_hemisphere='reference', export_pt2=False,
                  cache_dir=str(tmp_path / 'cache'))
    moved = {}
    for loss_lr in (None, 1e-2):
        out = tmp_path / f'run_{loss_lr}'
        cfg = load_config(None, {**common, 'loss_lr': loss_lr, 'run_dir': str(out / 'run'),
                                 'export_dir': str(out / 'models'),
                                 'export': loss_lr is not None})
        result = train(cfg)
        steps = result.epochs * (24 // 4)
        moved[loss_lr] = abs(result.history[-1]['s_q'] - (-3.0))
        assert all(math.isfinite(r['loss']) for r in result.history)
    assert moved[None] <= 1.5 * steps * 1e-4  # the old behaviour: pinned near the start
    assert moved[1e-2] > 10 * steps * 1e-4
    meta = read_metadata(result.export_ts)['training']
    assert meta['quat_loss'] == 'sign_invariant' and meta['quat_hemisphere'] == 'reference'
    samples = load_dataset(str(ds), 'train')
    ref = mean_quaternion(np.stack([s.quaternion for s in samples]))
    np.testing.assert_allclose(meta['quat_reference_wxyz'], ref, atol=1e-7)
    ckpt = load_checkpoint(Path(result.run_dir) / 'last.pt')
    np.testing.assert_allclose(ckpt['loss']['quat_ref'].numpy(), ref, atol=1e-6)
