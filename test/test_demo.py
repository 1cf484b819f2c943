"""The demo pipeline end to end at a tiny size, so `make demo` cannot silently rot.

Real everything: renders the synthetic scene, trains and exports a model, evaluates it offline,
starts the real node in its own process, replays the bag over DDS and reports.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros


def _run_demo(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, '-m', 'posenet_ros.cli', 'demo', '--tiny', '--out', str(out),
           '--models-dir', str(out / 'models'), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_demo_pipeline_tiny(tmp_path):
    out = tmp_path / 'demo'
    proc = _run_demo(out)
    summary = json.loads((out / 'summary.json').read_text())
    model = Path(summary['model'])
    assert model.is_file() and model.suffix == '.ts'
    for key in ('offline', 'live'):
        report = summary[key]
        methods = report['methods']
        assert {'mean_pose', 'nearest_neighbour'} <= set(methods), methods.keys()
        for name in ('cdf', 'map', 'errors_over_time'):
            assert Path(report['plots'][name]).is_file()
        assert (Path(summary['reports'][key]) / 'summary.md').is_file()
    offline = summary['offline']['methods']['posenet']
    assert offline['n_frames'] == 12 and offline['n_failed'] == 0
    # the scene map was built beside the export and every test frame was verified or refused
    assert Path(summary['map']).is_file() and 'refined' in summary['offline']['methods']
    ver = summary['offline']['verification']
    assert ver['n_frames'] == 12 and ver['n_verified'] + ver['n_unverified'] + \
        ver['n_rejected'] == 12
    assert 'verified against the map' in proc.stdout
    live = summary['live']
    # Every test frame was published into the node; the node answered most of them and its
    # latency was measured per answered frame.
    assert live['methods']['posenet_live']['n_frames'] == 12
    assert live['methods']['posenet_live']['n_failed'] < 12
    assert live['latency']['p50_ms'] > 0
    printed = proc.stdout
    assert 'summary' in printed and 'end-to-end latency' in printed and 'cdf.png' in printed
    assert 'vs retrieval (pose of the nearest training frame)' in printed

    # A second run reuses the data and the model (no re-render, no re-training).
    again = _run_demo(out, '--no-live')
    assert 'reusing' in again.stdout and 'epoch 1/' not in again.stderr
    assert Path(json.loads((out / 'summary.json').read_text())['model']) == model


def test_summary_says_where_posenet_beats_retrieval_and_where_not():
    from posenet_ros.tools.demo import versus_retrieval

    def method(t, r, r05, r1):
        return {'n_frames': 100, 'translation_m': {'median': t}, 'rotation_deg': {'median': r},
                'recall': {'0.5m_5deg': r05, '1m_10deg': r1}}

    mixed = versus_retrieval({'posenet': method(0.4, 7.0, 0.3, 0.8),
                              'nearest_neighbour': method(0.6, 5.0, 0.2, 0.8)})
    assert 'position median 0.400 vs 0.600 m (PoseNet better)' in mixed
    assert 'rotation median 7.00 vs 5.00 deg (retrieval better)' in mixed
    assert 'recall (1 m, 10 deg) 80 vs 80 % (tie)' in mixed
    assert mixed.endswith('PoseNet wins on position median, recall (0.5 m, 5 deg); retrieval on '
                          'rotation median.')
    assert versus_retrieval({'posenet': method(0.4, 7.0, 0.3, 0.8)}) is None
