"""Offline evaluation: real export, real synthetic dataset folder and bag, real report files."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from helpers_model import make_tiny_export
from helpers_slow import slow_fixture

from posenet_ros.core.errors import BagError, EvaluationError
from posenet_ros.evaluation.evaluate import dense_grid, dense_windows, evaluate, load_summary, main
from posenet_ros.evaluation.metrics import frame_errors
from posenet_ros.evaluation.trajectory_io import read_tum
from posenet_ros.model.preprocessing import Preprocess, resize_shorter_side_uint8
from posenet_ros.tools.synthetic import RosbagWriter, SceneConfig, write_bag, write_dataset

CFG = SceneConfig(width=64, height=48, fx=55.0, n_train=6, n_test=4)


@slow_fixture(scope='module')
def data(tmp_path_factory):
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp('evaluate')
    ds = write_dataset(root / 'ds', CFG, progress=False)
    bag = write_bag(root / 'bag', CFG, progress=False)
    # resnet18 at crop 32: cheap, and (unlike a random-init MobileNet) its output depends on
    # the input, so dense and single-crop predictions differ.
    model = make_tiny_export(root, backbone='resnet18', crop=32, name='tiny')
    return root, ds, bag, model


def _read_csv(path):
    with open(path, newline='') as fh:
        return list(csv.DictReader(fh))


def test_dense_windows_are_exact_crops():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8)
    resize, crop = 36, 32
    pre = Preprocess(resize, crop)
    resized = resize_shorter_side_uint8(torch.from_numpy(frame), resize)  # (36, 60, 3)
    grid = dense_grid(6, 36 - crop, 60 - crop)
    assert len(grid) == 6 and len(set(grid)) == 6
    wins = dense_windows(frame, resize, crop, 6)
    assert wins.shape == (6, resize, resize, 3)
    got = pre(torch.from_numpy(wins))
    for k, (top, left) in enumerate(grid):
        want = resized[top:top + crop, left:left + crop].permute(2, 0, 1)[None].float()
        want = (want / 255.0 - pre.mean) / pre.std
        torch.testing.assert_close(got[k:k + 1], want, rtol=0, atol=1e-6)
    assert dense_grid(1, 4, 28) == [(2, 14)]  # one crop = the centre crop


@pytest.fixture(scope='module')
def ds_report(data):
    root, ds, _, model = data
    out = root / 'report'
    summary = evaluate(model, out, dataset=ds, split='test', dense=4, nn_features='network',
                       progress=False)
    return out, summary


def test_evaluate_dataset_writes_a_complete_consistent_report(data, ds_report):
    root, ds, _, model = data
    out, summary = ds_report
    for name in ('frames.csv', 'summary.json', 'summary.md', 'cdf.png', 'map.png',
                 'errors_over_time.png', 'prediction.tum', 'ground_truth.tum'):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert list(summary['methods']) == ['posenet', 'posenet_dense4', 'mean_pose',
                                        'nearest_neighbour']
    rows = _read_csv(out / 'frames.csv')
    assert len(rows) == CFG.n_test

    def col(prefix, keys):
        return np.array([[float(r[f'{prefix}_{k}']) for k in keys] for r in rows])

    tp, tq = col('true', 'xyz'), col('true', ['qw', 'qx', 'qy', 'qz'])
    pp, pq = col('pred', 'xyz'), col('pred', ['qw', 'qx', 'qy', 'qz'])
    t_err, r_err = frame_errors(pp, pq, tp, tq)
    np.testing.assert_allclose([float(r['t_err_m']) for r in rows], t_err)
    np.testing.assert_allclose([float(r['r_err_deg']) for r in rows], r_err)
    assert np.median(t_err) == pytest.approx(summary['methods']['posenet']['translation_m']
                                             ['median'])
    # Dense averaging is a different estimate and costs more than one crop.
    dense_t = np.array([float(r['posenet_dense4_t_err_m']) for r in rows])
    assert not np.allclose(dense_t, t_err)
    assert summary['dense_cost']['crops'] == 4 and summary['dense_cost']['ms_per_frame_median'] > 0
    # Mean-pose baseline = distance of each test position to the mean training position.
    from posenet_ros.datasets import load_dataset

    train_mean = np.mean([s.position for s in load_dataset(ds, 'train')], axis=0)
    np.testing.assert_allclose([float(r['mean_pose_t_err_m']) for r in rows],
                               np.linalg.norm(tp - train_mean, axis=1), rtol=1e-9)
    # Nearest neighbour returns training poses: its error is that of some training frame.
    assert summary['methods']['nearest_neighbour']['n_failed'] == 0
    # TUM files reload to the CSV poses.
    stamps, pos, quat = read_tum(out / 'prediction.tum')
    np.testing.assert_array_equal(pos, pp)
    np.testing.assert_allclose(np.abs(np.sum(quat * pq, axis=1)), 1.0, atol=1e-12)
    np.testing.assert_allclose(stamps, [float(r['stamp']) for r in rows])
    assert json.loads((out / 'summary.json').read_text())['source']['split'] == 'test'
    assert '| posenet |' in (out / 'summary.md').read_text()


def test_bag_cli_matches_dataset_evaluation(data, ds_report, tmp_path, capsys):
    root, ds, bag, model = data
    out_ds, out_bag = ds_report[0], tmp_path / 'bag'
    assert main(['--model', str(model), '--bag', str(bag), '--image-topic', '/camera/image_raw',
                 '--pose-topic', '/ground_truth/pose', '--out', str(out_bag),
                 '--train-dataset', str(ds), '--nn-features', 'none', '--quiet']) == 0
    assert '| mean_pose |' in capsys.readouterr().out
    a, b = (_read_csv(p / 'frames.csv') for p in (out_ds, out_bag))
    assert len(a) == len(b) == CFG.n_test
    for key in ('stamp', 'true_x', 'true_qw', 'pred_x', 'pred_qz', 't_err_m', 'r_err_deg',
                'mean_pose_t_err_m'):
        # The bag holds the same rendered frames (lossless) and poses as the dataset's test split.
        np.testing.assert_allclose([float(r[key]) for r in b], [float(r[key]) for r in a],
                                   atol=1e-6, err_msg=key)
    s = load_summary(out_bag / 'summary.json')
    assert s['source']['pose_source'] == 'topic /ground_truth/pose'
    assert 'nearest_neighbour' not in s['methods'] and 'mean_pose' in s['methods']


def test_bag_errors_name_topics_and_missing_overlap(data, tmp_path):
    root, ds, bag, model = data
    with pytest.raises(BagError, match=r'/camera/image_raw \[sensor_msgs/msg/Image\]'):
        evaluate(model, tmp_path / 'x', bag=bag, pose_topic='/no_such_pose', progress=False,
                 baselines=False)
    # Images and poses that never overlap in time.
    odd = tmp_path / 'odd_bag'
    img = np.zeros((48, 64, 3), np.uint8)
    with RosbagWriter(odd) as w:
        for k in range(3):
            w.image('/cam', 100.0 + k, img)
            w.pose('/gt', 500.0 + k, [0, 0, 0], [1, 0, 0, 0])
    with pytest.raises(BagError, match='no image .* has a pose'):
        evaluate(model, tmp_path / 'y', bag=odd, progress=False, baselines=False)
    with pytest.raises(EvaluationError, match='exactly one'):
        evaluate(model, tmp_path / 'z', dataset=ds, bag=bag)


def test_failures_are_reported_not_hidden(data, tmp_path, monkeypatch):
    """A frame the model cannot localise is a failure with infinite error in every output."""
    root, ds, _, model = data
    import posenet_ros.evaluation.evaluate as ev
    from posenet_ros.core.errors import NonFiniteOutputError
    from posenet_ros.datasets import load_dataset, load_image

    real = ev._load_relocalizer
    bad_frame = load_image(load_dataset(ds, 'test')[1])

    class Flaky:  # the real relocalizer, failing on the second test frame only
        def __init__(self, *a, **k):
            self.inner = real(*a, **k)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def predict(self, frame):
            if np.array_equal(frame, bad_frame):
                raise NonFiniteOutputError('nan output')
            return self.inner.predict(frame)

    monkeypatch.setattr(ev, '_load_relocalizer', Flaky)
    s = evaluate(model, tmp_path / 'r', dataset=ds, baselines=False, progress=False)
    assert s['methods']['posenet']['n_failed'] == 1
    rows = _read_csv(tmp_path / 'r' / 'frames.csv')
    assert rows[1]['valid'] == '0' and math.isinf(float(rows[1]['t_err_m']))
    assert len(read_tum(tmp_path / 'r' / 'prediction.tum')[0]) == CFG.n_test - 1
    assert json.loads((tmp_path / 'r' / 'summary.json').read_text())['methods']['posenet'][
        'translation_m']['mean'] == 'inf'


def test_scoring_the_split_that_selected_the_model_is_flagged(data, tmp_path, caplog):
    """A model whose best.pt was picked on the test split gets a warning when scored on it."""
    from posenet_ros.evaluation.report import selection_warning

    root, ds, _, _ = data
    model = make_tiny_export(tmp_path, backbone='resnet18', crop=32, name='picked_on_test',
                             training={'selected_on': 'test', 'dataset': str(ds)})
    with caplog.at_level('WARNING', logger='posenet_ros.evaluation.evaluate'):
        summary = evaluate(model, tmp_path / 'on_test', dataset=ds, split='test',
                           baselines=False, progress=False)
    flagged = [n for n in summary['notes'] if 'selected on the' in n]
    assert len(flagged) == 1 and "'test' split" in flagged[0] and 'optimistic' in flagged[0]
    assert any('optimistic' in r.getMessage() for r in caplog.records)
    assert 'optimistic' in (tmp_path / 'on_test' / 'summary.md').read_text()
    other = evaluate(model, tmp_path / 'on_train', dataset=ds, split='train', baselines=False,
                     progress=False)
    assert not [n for n in other['notes'] if 'selected on the' in n]
    # the rule itself: holdout selection, another dataset, and old exports (val_split only)
    assert selection_warning({'training': {'selected_on': 'holdout'}}, ds, 'test') is None
    elsewhere = {'training': {'selected_on': 'test', 'dataset': str(root / 'elsewhere')}}
    assert selection_warning(elsewhere, ds, 'test') is None
    assert selection_warning({'training': {'val_split': 'test'}}, ds, 'test') is not None
    assert selection_warning({'training': {'selected_on': None, 'val_split': 'test'}}, ds,
                             'test') is None


def test_report_builder_assembles_what_offline_and_live_share(tmp_path):
    """Ground truth, methods, verification section, bag source and baselines, in real files."""
    from posenet_ros.datasets.rosbag_reader import BagStats
    from posenet_ros.datasets.types import PoseSample
    from posenet_ros.evaluation.builder import Baselines, ReportBuilder
    from posenet_ros.evaluation.report import MethodResult

    q = np.array([1.0, 0.0, 0.0, 0.0])
    train = [PoseSample([x, 0.0, 0.0], q) for x in (0.0, 2.0)]
    report = ReportBuilder(tmp_path / 'm.ts', {'model_id': 'abc', 'backbone': 'resnet18'},
                           device='cpu', baselines=Baselines(train, 'train set'))
    img = np.zeros((4, 4, 3), np.uint8)
    for k in range(3):
        report.add_frame(PoseSample([k, 0.0, 0.0], q, stamp=10.0 + k, name=f'f{k}'), img)
    with pytest.raises(EvaluationError, match="'short' has 2 predictions for 3 frames"):
        report.add_method('short', MethodResult.empty(2))
    coarse = report.add_method('posenet', MethodResult(
        np.array([[0.0, 0, 0], [1.1, 0, 0], [0, 0, 0]]), np.tile(q, (3, 1)),
        np.array([True, True, False]), np.array([5.0, 6.0, 7.0]), 'coarse'))
    refined = MethodResult.empty(3, 'refined')
    refined.valid[1], refined.positions[1], refined.quaternions[1] = True, [1.0, 0, 0.01], q
    ver = report.add_verification('refined', refined, coarse=coarse, map_path='s.map.npz',
                                  statuses=['rejected', 'verified', 'unverified'],
                                  inliers=np.array([0.0, 40.0, 3.0]), stages={})
    assert (ver['n_verified'], ver['n_rejected'], ver['n_unverified']) == (1, 1, 1)
    assert ver['verified_median_t_m'] == pytest.approx(0.01)
    assert ver['coarse_median_t_m_on_verified'] == pytest.approx(0.1)
    stats = BagStats('b', '/cam', 'topic /odom', 0.1, n_no_pose=2, pose_of='base_link',
                     pose_frame='map', extrinsic='/tf_static', camera_frame='cam_optical')
    report.describe_bag('b', stats, None, 0.1)
    summary = report.write(tmp_path / 'out', 'builder')
    assert list(summary['methods']) == ['posenet', 'refined', 'mean_pose']
    assert summary['source']['image_topic'] == '/cam'
    assert summary['source']['ground_truth_frames'] == ('base_link poses in map composed with '
                                                        '/tf_static to cam_optical')
    assert summary['source']['baseline_training_set'] == 'train set (2 frames)'
    assert any('2 image(s) without ground truth' in n for n in summary['notes'])
    rows = _read_csv(tmp_path / 'out' / 'frames.csv')
    assert [r['name'] for r in rows] == ['f0', 'f1', 'f2']
    assert [float(r['stamp']) for r in rows] == [10.0, 11.0, 12.0]
    # mean pose = (1, 0, 0): frame k is |k - 1| m away
    assert [float(r['mean_pose_t_err_m']) for r in rows] == [1.0, 0.0, 1.0]
    assert load_summary(tmp_path / 'out' / 'summary.json')['verification']['n_verified'] == 1
    with pytest.raises(EvaluationError, match='no frame'):
        ReportBuilder('m.ts', {}, device='cpu').write(tmp_path / 'empty', 'empty')
