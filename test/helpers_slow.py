"""What makes a test ``slow`` (left out by ``make test-fast``), and the guard that enforces it.

A test is slow when it is marked ``slow`` or ``learning`` in its file, or when it uses (directly
or through another fixture) a fixture defined with :func:`slow_fixture`: one that trains a
model, runs SfM, writes a ``.pt2`` or starts node processes. ``test/conftest.py`` adds the
marker before ``-m`` deselects, fails a test that is not slow but trains a network, and warns
about one that uses more than :data:`FAST_CPU_LIMIT_S` of CPU, so nothing heavy slips into the
fast set.
"""

from __future__ import annotations

import resource

import pytest

# CPU time (s) a test that is not slow may use, its fixtures' set-up and the child processes it
# waited for included: about twice the heaviest fast test, below any training run or node start
# (a child process that imports torch takes ~3 s of CPU before it does anything).
FAST_CPU_LIMIT_S = 5.0
# An optimizer over more parameters than this trains a network (fast tests step optimizers over
# a few small tensors, to check learning-rate schedules and loss weights).
NETWORK_PARAMETERS = 10_000


def slow_fixture(*args, **kwargs):
    """``pytest.fixture(*args, **kwargs)`` for a fixture that makes every test using it slow."""
    def define(func):
        func.makes_tests_slow = True
        return pytest.fixture(*args, **kwargs)(func)
    return define


def is_slow(item) -> bool:
    """Whether ``item`` is marked slow or learning, or uses a :func:`slow_fixture`."""
    if item.get_closest_marker('slow') or item.get_closest_marker('learning'):
        return True
    fixtures = getattr(item, '_fixtureinfo', None)
    return fixtures is not None and any(
        getattr(d.func, 'makes_tests_slow', False)
        for defs in fixtures.name2fixturedefs.values() for d in defs)


def cpu_seconds() -> float:
    """CPU time of this process and of the child processes it has waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def training_alarm(on_training):
    """Call ``on_training(n_parameters)``, then raise, when an optimizer over a network steps.

    A global torch optimizer hook; returns its handle (``.remove()`` it).
    """
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    def hook(optimizer, args, kwargs):
        n = sum(p.numel() for group in optimizer.param_groups for p in group['params'])
        if n > NETWORK_PARAMETERS:
            on_training(n)
            raise RuntimeError('a test that is not marked slow trains a network')

    return register_optimizer_step_pre_hook(hook)
