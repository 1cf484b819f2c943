"""Session-wide test settings, the ``slow`` marker's guard, and the trained fixtures tests share.

* Isolation: every session gets its own DDS domain (localhost discovery) and ROS log dir;
  plots are headless; each test module runs with one torch thread (a shared 2-core machine).
* ``slow`` (``make test-fast`` leaves it out; ``helpers_slow``): tests that use a
  ``slow_fixture`` or are marked ``learning`` get the marker here. A test that is not slow but
  trains a network fails; one that uses more than ``FAST_CPU_LIMIT_S`` of CPU gets a warning.
* ``--cpu-durations N`` lists the N tests that used the most CPU time (set-up to tear-down,
  child processes included): on a machine shared with other jobs, a test's cost shows far
  better in CPU time than in wall time.
* Trained fixtures are built once per run: one model serves every file that asks for its
  recipe, on every xdist worker (``helpers_parallel.build_once``).
* Parallel runs (``make test`` uses pytest-xdist, one file per worker at a time): each worker has
  its own DDS domains, and files start costliest first, by the wall times of the last run.
"""

import os
import tempfile
from types import SimpleNamespace

import pytest
from helpers_model import one_torch_thread  # noqa: F401 (autouse: one torch thread per module)
from helpers_parallel import (
    FILE_SECONDS_KEY,
    build_once,
    file_of,
    order_costliest_first,
    session_domain_id,
)
from helpers_slow import FAST_CPU_LIMIT_S, cpu_seconds, is_slow, slow_fixture, training_alarm

# Isolate every test session: own DDS domain, discovery on localhost only, own ROS log dir.
# An xdist worker inherits the controller's environment, so it always takes its own domain.
if os.environ.get('PYTEST_XDIST_WORKER') or 'ROS_DOMAIN_ID' not in os.environ:
    os.environ['ROS_DOMAIN_ID'] = str(session_domain_id())
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_LOG_DIR', tempfile.mkdtemp(prefix='posenet_ros_log_'))
os.environ.setdefault('MPLBACKEND', 'Agg')

_cpu_start = pytest.StashKey[float]()
_trained = pytest.StashKey[int]()
_cpu_used: list[tuple[float, str]] = []
_file_seconds: dict[str, float] = {}


def pytest_addoption(parser):
    parser.addoption('--cpu-durations', type=int, default=0, metavar='N',
                     help='list the N tests that used the most CPU time, set-up to tear-down')


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark ``slow`` what learns or uses a slow fixture (before ``-m`` deselects)."""
    for item in items:
        if is_slow(item):
            item.add_marker(pytest.mark.slow)
    cache = getattr(config, 'cache', None)
    order_costliest_first(items, cache.get(FILE_SECONDS_KEY, {}) if cache else {})


def pytest_runtest_logreport(report):
    """Add up each file's wall time (xdist's controller sees its workers' reports here too)."""
    _file_seconds[file_of(report.nodeid)] = \
        _file_seconds.get(file_of(report.nodeid), 0.0) + report.duration


def pytest_sessionfinish(session):
    """Remember each file's wall time, so that the next run starts the long files first."""
    cache = getattr(session.config, 'cache', None)
    if cache is None or os.environ.get('PYTEST_XDIST_WORKER') or not _file_seconds:
        return
    known = cache.get(FILE_SECONDS_KEY, {})
    known.update({name: round(s, 1) for name, s in _file_seconds.items()})
    cache.set(FILE_SECONDS_KEY, known)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Time the test in CPU seconds; watch a test that is not slow for training."""
    fast = not item.get_closest_marker('slow')
    alarm = training_alarm(lambda n: item.stash.__setitem__(_trained, n)) if fast else None
    item.stash[_cpu_start] = cpu_seconds()
    try:
        yield
    finally:
        if alarm is not None:
            alarm.remove()
        _cpu_used.append((cpu_seconds() - item.stash[_cpu_start], item.nodeid))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Fail a test that is not slow but trained, or used more CPU than FAST_CPU_LIMIT_S."""
    report = (yield).get_result()
    if call.when == 'teardown' or report.skipped or item.get_closest_marker('slow'):
        return
    used = cpu_seconds() - item.stash[_cpu_start]
    if call.when == 'call' and used > FAST_CPU_LIMIT_S and _trained not in item.stash:
        # A warning, not a failure: CPU time still depends on the machine, and a slower CPU
        # than ours must not fail a test that is right.
        item.warn(pytest.PytestWarning(
            f'{item.nodeid} is not marked slow but used {used:.1f} s of CPU, set-up included '
            f'(the fast set aims at {FAST_CPU_LIMIT_S:g} s a test): consider '
            '@pytest.mark.slow'))
        return
    if _trained not in item.stash:
        return
    reason = f'trains a network (an optimizer step over {item.stash[_trained]} parameters)'
    report.outcome = 'failed'
    report.longrepr = f'{item.nodeid} is not marked slow, but it {reason}: mark it ' \
                      '@pytest.mark.slow so that `make test-fast` leaves it out (docs/testing.md)'


def pytest_terminal_summary(terminalreporter, config):
    n = config.getoption('--cpu-durations')
    if n:
        terminalreporter.section(f'{n} tests with the most CPU time (s, set-up to tear-down, '
                                 'child processes included)')
        for used, nodeid in sorted(_cpu_used, reverse=True)[:n]:
            terminalreporter.write_line(f'{used:8.1f}  {nodeid}')
        total = sum(used for used, _ in _cpu_used)
        terminalreporter.write_line(f'{total:8.1f}  in total, {len(_cpu_used)} tests')


# --- trained fixtures shared by the session ------------------------------------------------------
@slow_fixture(scope='session')
def scene_model(tmp_path_factory):
    """The small scene model of courtyard ``2 + POSENET_TEST_SEED`` and its map (~1 min).

    The CPU demo recipe at 64/56 px for 4 epochs (``helpers_model.train_small_scene_model``) on
    80 rendered training frames (320x240), exported with its scene map. ``dataset`` also holds
    24 test frames: test laps between the training laps, never trained on. The geometric
    verification tests (``test_verify``: its bounds were measured on this model over seeds,
    see docs/testing.md) and the node's verification tests (``test_node_verify``) both use it.
    Under ``POSENET_TEST_SABOTAGE=labels`` its training poses are shuffled.
    """
    from helpers_learning import SEED, sabotage_labels
    from helpers_model import train_small_scene_model

    from posenet_ros.tools.synthetic import SceneConfig, write_dataset
    from posenet_ros.verify.mapfile import default_map_path

    cfg = SceneConfig(seed=2 + SEED, n_train=80, n_test=24)

    def build(root):
        dataset = sabotage_labels(write_dataset(root / 'dataset', cfg, progress=False))
        train_small_scene_model(root, dataset, epochs=4, build_map=True)

    # One build per run: with xdist, the first worker that needs it trains, the others wait.
    root = build_once(tmp_path_factory, f'scene_model_{SEED}', build)
    model = root / 'models' / 'scene.ts'
    assert model.is_file() and default_map_path(model).is_file(), sorted(root.rglob('*'))
    return SimpleNamespace(root=root, cfg=cfg, dataset=root / 'dataset', model=model,
                           map=default_map_path(model))
