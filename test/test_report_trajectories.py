"""The report's TUM files and what they leave out: evo cannot show a frame without a pose.

``write_report`` is given a model with failed frames and a refined method with unverified
frames; the TUM files must hold exactly the frames with a pose, and the summary (JSON, Markdown,
the files' header comments) must count the ones left out.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from posenet_ros.evaluation.report import (
    MODEL_METHOD,
    REFINED_METHOD,
    REPORT_FILES,
    VERIFIED_TUM,
    GroundTruth,
    MethodResult,
    load_summary,
    write_report,
)
from posenet_ros.evaluation.trajectory_io import read_tum

N = 10


def _frames(seed: int = 0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(N, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 0] < 0] *= -1
    gt = GroundTruth([f'f{i}' for i in range(N)], 100.0 + 0.1 * np.arange(N),
                     rng.normal(size=(N, 3)), q)
    return gt


def _method(gt: GroundTruth, valid) -> MethodResult:
    valid = np.asarray(valid, bool)
    return MethodResult(np.where(valid[:, None], gt.positions + 0.01, np.nan),
                        np.where(valid[:, None], gt.quaternions, np.nan), valid,
                        np.ones(N), 'test method')


@pytest.mark.parametrize('refined_name', [REFINED_METHOD, f'{REFINED_METHOD}_live'])
def test_verified_tum_and_the_counts_evo_cannot_show(tmp_path, refined_name):
    gt = _frames()
    coarse_ok = np.ones(N, bool)
    coarse_ok[[3, 7]] = False  # two frames with no pose
    verified = np.zeros(N, bool)
    verified[[0, 1, 2, 5, 8]] = True  # five verified
    summary = write_report(tmp_path, gt, {MODEL_METHOD: _method(gt, coarse_ok),
                                          refined_name: _method(gt, verified)})
    stamps, pos, _ = read_tum(tmp_path / VERIFIED_TUM)
    np.testing.assert_allclose(stamps, gt.stamps[verified])
    np.testing.assert_allclose(pos, gt.positions[verified] + 0.01)
    stamps, _, _ = read_tum(tmp_path / REPORT_FILES['prediction_tum'])
    np.testing.assert_allclose(stamps, gt.stamps[coarse_ok])
    assert len(read_tum(tmp_path / REPORT_FILES['ground_truth_tum'])[0]) == N

    t = load_summary(tmp_path / REPORT_FILES['summary_json'])['trajectories']
    assert t['n_frames'] == N
    assert (t['prediction']['n_poses'], t['prediction']['n_missing']) == (8, 2)
    assert (t['verified']['n_poses'], t['verified']['n_missing']) == (5, 5)
    assert t['verified']['method'] == refined_name and t['verified']['file'] == VERIFIED_TUM
    assert summary['files']['verified_tum'] == VERIFIED_TUM
    md = (tmp_path / REPORT_FILES['summary_md']).read_text()
    assert f'`{VERIFIED_TUM}` ({refined_name}): 5 of 10 frames; **5 frames not verified' in md
    assert f'`prediction.tum` ({MODEL_METHOD}): 8 of 10 frames; **2 failed frames' in md
    header = (tmp_path / VERIFIED_TUM).read_text().splitlines()[0]
    assert '5 of 10 frames' in header and 'evo_ape does not count them' in header
    # the recall of the refined method counts the five unverified frames as failures
    assert summary['methods'][refined_name]['n_failed'] == 5


def test_no_map_no_verified_file(tmp_path):
    gt = _frames(1)
    write_report(tmp_path, gt, {MODEL_METHOD: _method(gt, np.ones(N, bool))})
    assert not (tmp_path / VERIFIED_TUM).exists()
    summary = json.loads((tmp_path / REPORT_FILES['summary_json']).read_text())
    assert 'verified' not in summary['trajectories'] and 'verified_tum' not in summary['files']
    assert summary['trajectories']['prediction']['n_missing'] == 0
