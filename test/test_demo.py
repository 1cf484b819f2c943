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

    # A second run reuses the data and the model (no re-render, no re-training).
    again = _run_demo(out, '--no-live')
    assert 'reusing' in again.stdout and 'epoch 1/' not in again.stderr
    assert Path(json.loads((out / 'summary.json').read_text())['model']) == model
