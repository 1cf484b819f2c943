"""What lets ``make test`` run its files on several pytest-xdist workers at once.

* DDS domains: each worker owns a disjoint slice of ``ROS_DOMAIN_ID`` 1-100, so two tests that run
  at the same time on different workers never see each other's nodes (a shared domain would let
  one test's ``/initialpose`` or camera frames reach another's node). Domains above 101 are
  avoided: their RTPS ports would fall into Linux's ephemeral port range.
* Artifacts built once per run (a trained scene model): the first worker that needs one builds it
  under a file lock in the run's shared temporary folder; the others wait for it and reuse it.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
from pathlib import Path

from filelock import FileLock

MAX_DOMAIN_ID = 100


def worker_index() -> int:
    """0-based index of this xdist worker (``gw3`` -> 3); 0 without xdist."""
    name = os.environ.get('PYTEST_XDIST_WORKER', 'gw0')
    return int(name[2:]) if name.startswith('gw') and name[2:].isdigit() else 0


def worker_count() -> int:
    """How many xdist workers run this session (1 without xdist)."""
    return max(1, int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1')))


def domain_slice() -> range:
    """The ``ROS_DOMAIN_ID`` values of this worker (all of 1-100 without xdist)."""
    size = MAX_DOMAIN_ID // worker_count()
    if size < 2:
        raise RuntimeError(f'{worker_count()} xdist workers leave fewer than two DDS domains '
                           'each: run fewer workers (-n)')
    start = 1 + worker_index() * size
    return range(start, start + size)


def _domain_cycle():
    ids = list(domain_slice())
    # A random start keeps two runs on one machine (two users, two checkouts) apart.
    start = random.randrange(len(ids))
    return itertools.cycle(ids[start:] + ids[:start])


_next_ids = _domain_cycle()
_SESSION_DOMAIN_ID = next(_next_ids)


def session_domain_id() -> int:
    """The domain of this worker's session-wide ROS environment (conftest's ``ROS_DOMAIN_ID``)."""
    return _SESSION_DOMAIN_ID


def next_domain_id() -> int:
    """Another domain of this worker's slice for a private ROS session (cycles through it)."""
    return next(_next_ids)


def run_root(tmp_path_factory) -> Path:
    """The temporary folder every worker of this run shares (without xdist: the session's)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base


def build_once(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)`` once per run, whichever worker asks first; returns the folder.

    A folder without its completion mark (a worker killed mid-build) is built again.
    """
    folder = run_root(tmp_path_factory) / name
    done = folder / '.built'
    with FileLock(str(folder) + '.lock'):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            done.touch()
    return folder


# --- the order xdist hands files out in --------------------------------------------------------
FILE_SECONDS_KEY = 'posenet_ros/file_seconds'
# A file never timed yet counts this much per slow test (a node start or a short training).
SLOW_TEST_GUESS_S = 5.0


def file_of(nodeid: str) -> str:
    """The file part of a test id."""
    return nodeid.split('::', 1)[0]


def order_costliest_first(items: list, known_seconds: dict[str, float]) -> None:
    """Reorder ``items`` file by file, the costliest file first; a file's own order stays.

    xdist (``--dist loadfile --no-loadscope-reorder``) hands files to idle workers in this order,
    so long files start early and short ones fill the gaps at the end. Costs are the wall times
    recorded by the last runs on this checkout, else a guess from the file's slow tests.
    """
    slow: dict[str, int] = {}
    for item in items:
        name = file_of(item.nodeid)
        slow[name] = slow.get(name, 0) + bool(item.get_closest_marker('slow'))
    rank = {name: k for k, name in enumerate(sorted(
        slow, key=lambda f: -known_seconds.get(f, SLOW_TEST_GUESS_S * slow[f])))}
    items.sort(key=lambda item: rank[file_of(item.nodeid)])
