"""A broken supervisor fails the closed loop's checks; the package's passes them (no ROS).

The loop of ``scripts/supervision_loop.py`` in simulated time: the simulated robot, Nav2's
AMCL (the ``amcl`` bindings), the session's trained courtyard model verifying frames at the
node's default ``supervision_rate``, and a supervisor. The checks are the closed-loop test's
scenarios (a) initialized, (c) nothing sent while AMCL is right, (d) other scene and blank
frames send nothing, (b) a kidnap is put back; here they are returned as a list of failures, so
that the same checks can be shown to fail for a supervisor that re-initializes on every
verified frame and for one that never does.
"""

from __future__ import annotations

import json
import sys

import pytest
from helpers_model import one_torch_thread  # noqa: F401 (autouse)
from ros_helpers import ROOT

pytest.importorskip('amcl', reason='the amcl bindings (requirements/test.txt) are not installed')
sys.path.insert(0, str(ROOT / 'scripts'))

from supervision_loop import LoopConfig, SupervisionLoop, recovered_at  # noqa: E402

from posenet_ros.supervision import Action, Supervisor, SupervisorConfig  # noqa: E402

OTHER, BLANK, SCENE, KIDNAP, END = 14.0, 17.0, 20.0, 22.0, 34.0  # s


class EveryFrame(Supervisor):
    """Broken: sends every verified pose as an initial pose."""

    def observe(self, stamp_ns, verified, localizer=None, odom=None, **kw):
        super().observe(stamp_ns, verified, localizer, odom, **kw)
        if verified is None:
            return None
        return Action('reinitialize', verified, stamp_ns, 1, 'broken: every verified frame')


class Never(Supervisor):
    """Broken: judges, but never acts."""

    def observe(self, *args, **kw):
        super().observe(*args, **kw)
        return None


def _camera(mode):
    def switch(loop):
        loop.camera = mode
    return switch


def scenario_failures(localizer, scene, other, supervisor) -> list[str]:
    """Run the script; the scenarios it fails (empty: all hold)."""
    loop = SupervisionLoop(localizer, scene, supervisor, LoopConfig(), other_scene=other)
    rec = loop.run(END, [(OTHER, _camera('other')), (BLANK, _camera('blank')),
                         (SCENE, _camera('scene')),
                         (KIDNAP, lambda lp: lp.kidnap(lp.robot.theta + 2.2))])
    sends = [s['t'] for s in rec.sends]
    failures = []
    first = sends[0] if sends else None
    if first is None or recovered_at(rec, 0.0, OTHER) is None:
        failures.append('a: AMCL was never initialized')
    if any(first < t < OTHER for t in sends):
        failures.append(f'c: {sum(first < t < OTHER for t in sends)} initial poses sent while '
                        'AMCL was right')
    if any(OTHER <= t < KIDNAP for t in sends):
        failures.append('d: an initial pose sent during other-scene / blank frames')
    if recovered_at(rec, KIDNAP, END) is None:
        failures.append('b: AMCL was not put back after the kidnap')
    wrong = [s for s in rec.sends if s['error_m'] > 0.3 or s['error_deg'] > 5.0]
    if wrong:
        failures.append(f'wrong initial poses: {wrong}')
    return failures


@pytest.fixture(scope='module')
def world(scene_model):
    from posenet_ros.localizer import Localizer
    from posenet_ros.tools.synthetic import make_scene

    localizer = Localizer(scene_model.model, scene_map=scene_model.map, warmup=1)
    return localizer, make_scene(scene_model.cfg.seed), make_scene(scene_model.cfg.seed + 5)


def test_the_supervisor_passes_every_scenario(world):
    sup = Supervisor(SupervisorConfig(recovery='auto'))
    assert scenario_failures(*world, sup) == []
    assert sup.counters['reinits_sent'] == 1 and sup.counters['inits_sent'] == 1, sup.counters


@pytest.mark.parametrize('broken, fails', [(EveryFrame, 'c'), (Never, 'a')])
def test_a_broken_supervisor_fails(world, broken, fails):
    failures = scenario_failures(*world, broken(SupervisorConfig(recovery='auto')))
    assert any(f.startswith(fails) for f in failures), failures
    if broken is Never:
        assert any(f.startswith('b') for f in failures), failures


def test_the_benchmark_runs_quick(scene_model, tmp_path, capsys):
    """``scripts/bench_supervision.py --quick`` end to end: its JSON, plot and target table."""
    import bench_supervision

    assert bench_supervision.main(['--quick', '--model', str(scene_model.model), '--scene-seed',
                                   str(scene_model.cfg.seed), '--out', str(tmp_path)]) == 0
    res = json.loads((tmp_path / 'bench_supervision.json').read_text())
    s = res['summary']
    assert s['kidnaps'] == 1 and s['initial_poses_sent'] >= 2, s
    assert s['drive_hours'] > 0 and s['verify_cpu_share'] > 0 and s['verify_ms_p50'] > 0
    assert (tmp_path / 'bench_supervision.png').stat().st_size > 10_000
    out = capsys.readouterr().out
    assert 'target <= 2 s' in out and 'wrong (re-)initializations' in out
