"""Metrics against hand-computed cases (q and -q, failures counted as infinite)."""

import json
import math

import numpy as np
import pytest

from posenet_ros.evaluation.metrics import (
    frame_errors,
    json_safe,
    percentile_inf,
    recall,
    summarize,
    threshold_key,
)

IDENTITY = np.array([1.0, 0.0, 0.0, 0.0])


def _rot_z(deg: float) -> np.ndarray:
    half = math.radians(deg) / 2
    return np.array([math.cos(half), 0.0, 0.0, math.sin(half)])


def test_frame_errors_hand_computed():
    true_p = np.zeros((3, 3))
    true_q = np.tile(IDENTITY, (3, 1))
    pred_p = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.1], [0.0, 0.0, 0.0]])
    pred_q = np.stack([_rot_z(90), _rot_z(10), IDENTITY * 2.0])  # un-normalised is fine
    t, r = frame_errors(pred_p, pred_q, true_p, true_q)
    np.testing.assert_allclose(t, [5.0, 0.1, 0.0])
    np.testing.assert_allclose(r, [90.0, 10.0, 0.0], atol=1e-9)


def test_q_and_minus_q_are_the_same_rotation():
    q = _rot_z(30)
    t, r = frame_errors(np.zeros((2, 3)), np.stack([q, -q]), np.zeros((2, 3)),
                        np.stack([q, q]))
    np.testing.assert_allclose(r, [0.0, 0.0], atol=1e-6)
    # 350 deg about z is 10 deg the other way: the error is the shortest angle.
    _, r = frame_errors(np.zeros((1, 3)), _rot_z(350)[None], np.zeros((1, 3)), IDENTITY[None])
    np.testing.assert_allclose(r, [10.0], atol=1e-9)


def test_failures_are_infinite_and_count_against_recall():
    true_p = np.zeros((4, 3))
    true_q = np.tile(IDENTITY, (4, 1))
    pred_p = np.array([[0.01, 0, 0], [np.nan, 0, 0], [0.2, 0, 0], [0.0, 0, 0]])
    pred_q = np.stack([IDENTITY, IDENTITY, _rot_z(1.0), np.zeros(4)])  # zero quat = failure
    valid = np.array([True, True, False, True])  # frame 2 explicitly failed (e.g. dropped)
    t, r = frame_errors(pred_p, pred_q, true_p, true_q, valid=valid)
    assert t[0] == pytest.approx(0.01)
    assert np.isinf(t[1:]).all() and np.isinf(r[1:]).all()
    s = summarize(t, r)
    assert s['n_frames'] == 4 and s['n_failed'] == 3
    assert s['recall']['5cm_5deg'] == pytest.approx(0.25)
    assert s['recall']['1m_10deg'] == pytest.approx(0.25)  # inf never passes a threshold
    assert math.isinf(s['translation_m']['median'])  # 3 of 4 failed
    assert math.isinf(s['translation_m']['mean'])
    assert s['translation_m']['mean_valid'] == pytest.approx(0.01)


def test_summary_hand_computed():
    t = np.array([0.04, 0.1, 0.3, 0.6, 2.0])
    r = np.array([1.0, 1.5, 4.0, 9.0, 20.0])
    s = summarize(t, r, ms=np.array([10.0, 20.0, 30.0, 40.0, 50.0]))
    assert s['translation_m']['median'] == pytest.approx(0.3)
    assert s['rotation_deg']['median'] == pytest.approx(4.0)
    assert s['translation_m']['mean'] == pytest.approx(np.mean(t))
    assert s['translation_m']['p90'] == pytest.approx(0.6 + 0.6 * (2.0 - 0.6))
    rec = s['recall']
    assert rec['5cm_5deg'] == pytest.approx(0.2)
    assert rec['25cm_2deg'] == pytest.approx(0.4)
    assert rec['0.5m_5deg'] == pytest.approx(0.6)
    assert rec['1m_10deg'] == pytest.approx(0.8)
    assert s['ms']['p50'] == pytest.approx(30.0)
    assert s['ms']['p95'] == pytest.approx(48.0)


def test_percentile_with_infinities_and_json():
    assert percentile_inf([1.0, 2.0, np.inf], 50) == 2.0
    assert percentile_inf([1.0, np.inf], 50) == math.inf
    assert percentile_inf([np.inf, np.inf, np.inf], 90) == math.inf  # numpy gives nan here
    assert percentile_inf([1.0, 3.0], 50) == 2.0
    assert math.isnan(percentile_inf([], 50))
    assert math.isnan(recall(np.array([]), np.array([]), 1, 1))
    text = json.dumps(json_safe({'a': np.float32(np.inf), 'b': [np.int64(3), 0.5]}),
                      allow_nan=False)
    assert json.loads(text) == {'a': 'inf', 'b': [3, 0.5]}
    assert float(json.loads(text)['a']) == math.inf


def test_threshold_names():
    assert threshold_key(0.05, 5) == '5cm_5deg'
    assert threshold_key(0.25, 2) == '25cm_2deg'
    assert threshold_key(0.5, 5) == '0.5m_5deg'
    assert threshold_key(1.0, 10) == '1m_10deg'
