"""Assertions on learned or measured outcomes, with their margins on record.

A short training run lands in a slightly different place on every CPU: the floating-point
kernels torch and oneDNN pick (AVX-512, AVX2, scalar) round differently, and a few hundred
optimiser steps amplify that. So every test that asserts what a model learned (or what a
measurement found, like SfM label accuracy) is marked ``learning`` and asserts through
:func:`check_below`, which also appends ``(name, value, bound)`` to ``$POSENET_LEARNING_LOG``
(JSON lines) when that variable is set. ``scripts/learning_spread.py`` reruns the learning tests
across seeds, CPU kernel paths and thread counts with that log and reports each assertion's
worst case as a fraction of its bound (``make test-isa`` is its short form).

Knobs (environment variables, read once at import):

* ``POSENET_TEST_SEED`` (default 0): added to the scene and training seeds of learning tests.
* ``POSENET_TEST_THREADS`` (default 1): torch threads of their training runs.
* ``POSENET_TEST_SABOTAGE``: break the learning on purpose, to prove each check can fail.
  ``labels`` shuffles the training poses among the training frames (a network then cannot learn
  the views); ``int8`` quantizes a copy of the model whose pose regressors were zeroed (a
  quantizer that lost the trained weights).
  Every learning assertion must then fail; ``learning_spread.py --sabotage`` checks that.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

SEED = int(os.environ.get('POSENET_TEST_SEED', '0'))
THREADS = int(os.environ.get('POSENET_TEST_THREADS', '1'))
SABOTAGE = os.environ.get('POSENET_TEST_SABOTAGE', '')


def check_below(name: str, value: float, bound: float, detail: str = '') -> None:
    """Assert ``value < bound`` for a learned outcome, and log both for the spread report.

    Under ``POSENET_TEST_SABOTAGE`` the check only records (so that every check of a test is
    evaluated, not just the first): the spread script then requires each to have failed.
    """
    value, bound = float(value), float(bound)
    log = os.environ.get('POSENET_LEARNING_LOG')
    if log:
        test = os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0]
        row = {'name': name, 'value': value, 'bound': bound, 'test': test, 'seed': SEED,
               'threads': THREADS, 'sabotage': SABOTAGE or None}
        with open(log, 'a', encoding='utf-8') as f:
            f.write(json.dumps(row) + '\n')
    if SABOTAGE:
        return
    assert value < bound, f'{name}: {value:.4g} is not below its bound {bound:.4g}. {detail}'


def sabotage_labels(dataset: Path) -> Path:
    """With ``POSENET_TEST_SABOTAGE=labels``: permute the training poses of a manifest dataset.

    Images keep their files; each training frame gets another training frame's pose, so there
    is nothing to learn and every learned-outcome check must fail. A no-op otherwise.
    """
    if SABOTAGE != 'labels':
        return dataset
    from posenet_ros.datasets.manifest import read_manifest, read_manifest_info, write_manifest

    samples = read_manifest(dataset, 'all')
    info = read_manifest_info(dataset)
    train = [s for s in samples if s.split == 'train']
    poses = [(s.position, s.quaternion) for s in train]
    order = np.random.default_rng(SEED + 12345).permutation(len(train))
    for s, k in zip(train, order):
        s.position, s.quaternion = poses[k]
    write_manifest(dataset, samples, info=info)
    return dataset
