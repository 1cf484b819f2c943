"""Live evaluation: a short synthetic bag through the real node process, a complete report."""

import csv
import json

import numpy as np
import pytest
import torch

pytest.importorskip('rclpy')

from helpers_model import make_tiny_export  # noqa: E402

from posenet_ros.datasets import read_bag  # noqa: E402
from posenet_ros.model.relocalizer import Relocalizer  # noqa: E402
from posenet_ros.tools.synthetic import SceneConfig, write_bag, write_dataset  # noqa: E402

CFG = SceneConfig(width=64, height=48, fx=55.0, n_train=6, n_test=8, rate=30.0)


@pytest.mark.slow
def test_live_evaluation_through_the_real_node(tmp_path):
    from posenet_ros.ros.live_eval import live_evaluate

    torch.set_num_threads(1)
    ds = write_dataset(tmp_path / 'ds', CFG, progress=False)
    bag = write_bag(tmp_path / 'bag', CFG, progress=False)
    model = make_tiny_export(tmp_path, backbone='resnet18', crop=32)
    out = tmp_path / 'live'
    # 30 Hz frames played at 1/4 speed: 133 ms apart, ample for this model even on a busy CPU.
    summary = live_evaluate(model, bag, out, rate=0.25, train_dataset=ds, nn_features='none',
                            pose_topic='/ground_truth/pose',  # the bag also has base poses
                            progress=False, node_params={'num_threads': 1,
                                                         'warmup_iterations': 2})
    for name in ('frames.csv', 'summary.json', 'summary.md', 'cdf.png', 'map.png',
                 'errors_over_time.png', 'prediction.tum', 'ground_truth.tum', 'node.log'):
        assert (out / name).stat().st_size > 0, name
    live = summary['live']
    assert live['frames_published'] == CFG.n_test
    assert live['frames_with_ground_truth'] == CFG.n_test
    assert live['poses_received'] >= CFG.n_test - 1, (out / 'node.log').read_text()[-2000:]
    assert 0 < live['e2e_ms']['p50'] < 5000
    assert set(summary['methods']) == {'posenet_live', 'mean_pose'}
    doc = json.loads((out / 'summary.json').read_text())
    assert doc['methods']['posenet_live']['n_frames'] == CFG.n_test
    # What the node published for each frame is what the model predicts offline for it.
    samples, _ = read_bag(bag, pose_topic='/ground_truth/pose')
    reloc = Relocalizer(model)
    offline = np.array([reloc.predict(s.image).position for s in samples])
    with open(out / 'frames.csv', newline='') as fh:
        rows = list(csv.DictReader(fh))
    got = np.array([[float(r[f'pred_{a}']) for a in 'xyz'] for r in rows])
    valid = np.array([r['valid'] == '1' for r in rows])
    assert valid.sum() == live['poses_received']
    np.testing.assert_allclose(got[valid], offline[valid], atol=1e-4)
    e2e = np.array([float(r['e2e_ms']) for r in rows])
    assert np.all(np.isfinite(e2e[valid])) and np.all(e2e[valid] > 0)
    assert np.isnan(e2e[~valid]).all()
