"""The paper's experiments run end to end at tiny sizes (real training, real exports)."""

import json

import numpy as np
import pytest
import torch
from helpers_model import make_tiny_export
from helpers_slow import slow_fixture

from posenet_ros.core.errors import EvaluationError
from posenet_ros.tools.studies import (
    PERTURBATIONS,
    main,
    perturb,
    pretraining_study,
    robustness_study,
    subset_indices,
)
from posenet_ros.tools.synthetic import SceneConfig, write_dataset


@slow_fixture(scope='module')
def tiny_ds(tmp_path_factory):
    torch.set_num_threads(1)  # 1 thread: several times faster than 2 on a busy 2-core CPU
    cfg = SceneConfig(width=64, height=48, fx=55.0, n_train=10, n_test=4)
    return write_dataset(tmp_path_factory.mktemp('studies') / 'ds', cfg, progress=False)


def test_perturbations_do_what_they_say():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    for kind, p in PERTURBATIONS.items():
        identity = {'darkness': 1.0, 'focal_length': 1.0}.get(kind, 0.0)
        assert identity in p.levels and identity in p.tiny_levels
        np.testing.assert_array_equal(perturb(img, kind, identity), img)
    blurred = perturb(img, 'motion_blur', 10.0)  # 6 px horizontal box blur
    gx = lambda a: np.abs(np.diff(a.astype(float), axis=1)).mean()  # noqa: E731
    gy = lambda a: np.abs(np.diff(a.astype(float), axis=0)).mean()  # noqa: E731
    assert gx(blurred) < 0.3 * gx(img) and gy(blurred) > 0.3 * gy(img)  # horizontal only
    dark = perturb(img, 'darkness', 0.25)
    assert dark.mean() == pytest.approx(img.mean() * 0.25, abs=0.6)
    noisy = perturb(np.full((40, 60, 3), 128, np.uint8), 'noise', 15.0)
    assert noisy.astype(float).std() == pytest.approx(15.0, rel=0.1)
    zoom = perturb(img, 'focal_length', 2.0)  # centre half of the frame, enlarged 2x
    assert zoom.shape == img.shape
    assert np.abs(zoom[20, 30].astype(int) - img[20, 30].astype(int)).max() <= 128
    wide = perturb(img, 'focal_length', 0.5)  # shrunk into the centre, black border
    assert wide[:10].max() == 0 and wide[10:30, 15:45].max() > 0
    with pytest.raises(EvaluationError, match='unknown perturbation'):
        perturb(img, 'fog', 1.0)


def test_subset_indices_spread_over_the_sequence():
    assert subset_indices(10, 1) == [0]
    assert subset_indices(10, 2) == [0, 9]
    assert subset_indices(10, 10) == list(range(10))
    with pytest.raises(EvaluationError):
        subset_indices(3, 4)


def test_robustness_tiny(tiny_ds, tmp_path):
    model = make_tiny_export(tmp_path, backbone='resnet18', crop=32)
    doc = robustness_study(model, tiny_ds, tmp_path / 'rob', tiny=True, progress=False)
    rows = doc['rows']
    assert len(rows) == sum(len(p.tiny_levels) for p in PERTURBATIONS.values())
    # Every family's identity level scores the undegraded frames: identical results.
    ident = [r for r in rows if r['level'] in (0.0, 1.0)]
    assert len(ident) == 4 and len({r['median_t_m'] for r in ident}) == 1
    degraded = [r for r in rows if r['level'] not in (0.0, 1.0)]
    assert all(r['median_t_m'] != ident[0]['median_t_m'] for r in degraded)
    assert doc['reference_mean_pose']['median_t_m'] > 0
    for name in ('robustness.json', 'robustness.md', 'robustness.png',
                 'robustness_rotation.png'):
        assert (tmp_path / 'rob' / name).stat().st_size > 0
    assert '| motion_blur |' in (tmp_path / 'rob' / 'robustness.md').read_text()


def test_training_size_tiny_cli(tiny_ds, tmp_path, capsys):
    out = tmp_path / 'size'
    assert main(['training-size', '--dataset', str(tiny_ds), '--out', str(out), '--tiny',
                 '--quiet', '--threads', '1']) == 0
    doc = json.loads((out / 'training_size.json').read_text())
    assert [r['n_train'] for r in doc['rows']] == [4, 8]
    assert all(r['epochs'] == 2 and r['n_frames'] == 4 for r in doc['rows'])
    assert (out / 'models' / 'train_4.ts').is_file() and (out / 'models' / 'train_8.ts').is_file()
    assert (out / 'training_size.png').stat().st_size > 0
    assert '| 8 |' in capsys.readouterr().out


def test_pretraining_tiny(tiny_ds, tmp_path):
    from posenet_ros.model.export import read_metadata

    out = tmp_path / 'pre'
    doc = pretraining_study(tiny_ds, out, tiny=True, progress=False)
    assert [r['init'] for r in doc['rows']] == ['imagenet', 'random']
    assert set(doc['curves']) == {'imagenet init', 'random init'}
    assert all(len(v) == 2 for v in doc['curves'].values())  # one value per epoch
    metas = [read_metadata(out / 'models' / f'init_{k}.ts') for k in ('imagenet', 'random')]
    assert [m['config']['pretrained'] for m in metas] == ['imagenet', None]
    assert metas[0]['model_id'] != metas[1]['model_id']
    assert (out / 'pretraining.png').stat().st_size > 0
