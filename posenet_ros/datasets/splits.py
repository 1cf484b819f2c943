"""Does a test split test anything: test frames that are near-copies of training frames.

A camera at 15-30 Hz moves millimetres between frames, so holding out every n-th frame
(``--test-every``) puts each test frame between two training frames that look the same: the
score then measures memory, not relocalization. A near-copy is a test frame with a training
frame within :data:`NEAR_DISTANCE` metres, :data:`NEAR_ANGLE` degrees **and** :data:`NEAR_TIME`
seconds: the time condition keeps a revisit of the same place on a later pass (what a
relocalizer is for) from counting. Hold out time instead (``--test-after``, or a separate bag).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np

from posenet_ros.core.geometry import rotation_error_deg

__all__ = ['NEAR_DISTANCE', 'NEAR_ANGLE', 'NEAR_TIME', 'WARN_FRACTION', 'WARN_COUNT',
           'SplitCheck',
           'check_split', 'warn_near_copies']

NEAR_DISTANCE = 0.10  # m
NEAR_ANGLE = 10.0  # deg
NEAR_TIME = 1.0  # s
#: Warn when at least this fraction of the test frames, and :data:`WARN_COUNT` of them, are
#: near-copies (a --test-after split has one or two at its boundary, --test-every nearly all).
WARN_FRACTION = 0.25
WARN_COUNT = 3


@dataclass
class SplitCheck:
    """How many test frames are near-copies of training frames, by the thresholds used."""

    n_train: int
    n_test: int
    n_near_copies: int
    distance: float = NEAR_DISTANCE
    angle: float = NEAR_ANGLE
    time: float = NEAR_TIME

    @property
    def fraction(self) -> float:
        """Near-copies per test frame (0 without test frames)."""
        return self.n_near_copies / self.n_test if self.n_test else 0.0

    def message(self) -> str:
        """One line for the user."""
        return (f'{self.n_near_copies} of {self.n_test} test frames are near-copies of training '
                f'frames (a training frame within {self.distance * 100:.0f} cm, '
                f'{self.angle:.0f} deg and {self.time:g} s)')

    def as_dict(self) -> dict:
        """JSON-friendly, for dataset.json."""
        return asdict(self)


def check_split(samples, distance: float = NEAR_DISTANCE, angle: float = NEAR_ANGLE,
                time: float = NEAR_TIME) -> SplitCheck:
    """Count the test samples with a training sample near in position, rotation and time.

    Samples without a stamp are compared by pose only (their time condition holds).
    """
    train = [s for s in samples if s.split == 'train']
    test = [s for s in samples if s.split == 'test']
    near = 0
    if train and test:
        pos = np.array([s.position for s in train])
        quat = np.array([s.quaternion for s in train])
        stamps = np.array([np.nan if s.stamp is None else s.stamp for s in train])
        for s in test:
            close = np.linalg.norm(pos - np.asarray(s.position), axis=1) <= distance
            if s.stamp is not None:
                close &= ~(np.abs(stamps - s.stamp) > time)
            if close.any() and np.any(
                    rotation_error_deg(quat[close], np.asarray(s.quaternion)) <= angle):
                near += 1
    return SplitCheck(len(train), len(test), near, distance, angle, time)


def warn_near_copies(check: SplitCheck, where: str) -> bool:
    """Warn (and return True) when too many test frames are near-copies."""
    if check.n_near_copies >= WARN_COUNT and check.fraction >= WARN_FRACTION:
        warnings.warn(f'{where}: {check.message()}: the test split would score memory, not '
                      'relocalization; hold out time instead (--test-after SECONDS, or a '
                      'separate bag of another pass)', stacklevel=2)
        return True
    return False
