"""The one in-memory form of a dataset sample, and helpers every reader shares.

Every reader (Cambridge, 7-Scenes, rosbag2, manifest) returns ``list[PoseSample]`` in the
project's convention (see ``posenet_ros.core.geometry``):
``position`` = camera centre in the map frame
(metres), ``quaternion`` = camera-to-map rotation of the REP 103 optical frame (z forward, x right,
y down), **wxyz**, canonical ``w >= 0``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from posenet_ros.core.errors import DatasetError, EmptySplitError
from posenet_ros.core.geometry import canonicalize_quaternion, pose_to_matrix

__all__ = [
    'PoseSample', 'load_image', 'check_images_exist', 'intrinsics_matrix', 'checked_quaternion',
    'select_split', 'SPLITS', 'QUATERNION_NORM_TOLERANCE',
]

#: Split names understood by every reader; ``'all'`` selects every sample.
SPLITS = ('train', 'test', 'all')

#: A label quaternion whose norm differs from 1 by more than this is reported (then normalised).
#: Labels printed with 6 decimals are off by ~1e-6, so this only flags real mistakes.
QUATERNION_NORM_TOLERANCE = 1e-3


@dataclass
class PoseSample:
    """One image with its ground-truth pose ``T_map_cam`` in the project's convention.

    Exactly one image source is set: ``image_path`` (a file on disk, decoded lazily by
    :func:`load_image`) or ``image`` (an in-memory ``(H, W, 3)`` uint8 RGB array, e.g. from a bag).
    """

    position: np.ndarray  # (3,) float64, camera centre in the map frame, metres
    quaternion: np.ndarray  # (4,) float64, camera-to-map rotation, wxyz, w >= 0
    split: str = 'train'
    image_path: Path | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    stamp: float | None = None  # seconds (header stamp for bags), None when unknown
    intrinsics: np.ndarray | None = None  # (3, 3) K in pixels of the stored image, or None
    name: str = ''

    def __post_init__(self):
        self.position = np.asarray(self.position, dtype=np.float64).reshape(3)
        self.quaternion = canonicalize_quaternion(
            np.asarray(self.quaternion, dtype=np.float64).reshape(4))
        if self.image_path is not None:
            self.image_path = Path(self.image_path)
        if self.intrinsics is not None:
            self.intrinsics = np.asarray(self.intrinsics, dtype=np.float64).reshape(3, 3)
        if not self.name:
            self.name = self.image_path.name if self.image_path is not None else ''

    @property
    def matrix(self) -> np.ndarray:
        """The 4x4 ``T_map_cam`` of this sample."""
        return pose_to_matrix(self.position, self.quaternion)


def load_image(sample: PoseSample) -> np.ndarray:
    """Return the sample's image as an ``(H, W, 3)`` uint8 RGB array.

    Raises :class:`DatasetError` naming the file when it is missing or cannot be decoded.
    """
    if sample.image is not None:
        img = np.asarray(sample.image)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise DatasetError(
                f'sample {sample.name!r}: in-memory image must be (H, W, 3) uint8 RGB, got '
                f'{img.shape} {img.dtype}')
        return img
    if sample.image_path is None:
        raise DatasetError(f'sample {sample.name!r} has neither image_path nor image')
    path = sample.image_path
    if not path.is_file():
        raise DatasetError(f'image file {path} does not exist; check the dataset folder '
                           'and the paths in its label file')
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(f'image file {path} cannot be decoded (corrupt or not an image); '
                           're-extract or remove it from the label file')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """3x3 pinhole matrix K (pixel centres at integer coordinates, OpenCV convention)."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


class _NormReport:
    """Collects non-unit label quaternions of one file and warns once, naming file:line."""

    def __init__(self, path):
        self.path = path
        self.lines: list[tuple[int, float]] = []

    def flush(self):
        if self.lines:
            line_no, norm = self.lines[0]
            more = f' ({len(self.lines)} such lines in this file)' if len(self.lines) > 1 else ''
            warnings.warn(
                f'{self.path}:{line_no}: quaternion norm {norm:.6f} is not 1; normalised{more}. '
                'Check the label file if this is unexpected.', stacklevel=3)


def checked_quaternion(q, report: _NormReport | None, line_no: int) -> np.ndarray:
    """Normalise a label quaternion, recording a non-unit one in ``report`` for a warning."""
    q = np.asarray(q, dtype=np.float64)
    norm = float(np.linalg.norm(q))
    if report is not None and abs(norm - 1.0) > QUATERNION_NORM_TOLERANCE:
        report.lines.append((line_no, norm))
    return canonicalize_quaternion(q)


def select_split(samples: list[PoseSample], split: str, source) -> list[PoseSample]:
    """Keep the samples of ``split`` (``'all'`` keeps every one); raise if none remain."""
    if split == 'all':
        out = list(samples)
    else:
        out = [s for s in samples if s.split == split]
    if not out:
        have = sorted({s.split for s in samples})
        raise EmptySplitError(
            f'{source}: split {split!r} has no samples (splits present: {have or "none"}); '
            "choose another split or 'all'")
    return out


def check_images_exist(samples: list[PoseSample], root) -> None:
    """Raise :class:`DatasetError` naming the first missing image file of ``samples``."""
    missing = [s.image_path for s in samples
               if s.image is None and (s.image_path is None or not s.image_path.is_file())]
    if missing:
        raise DatasetError(
            f'{root}: {len(missing)} of {len(samples)} listed images are missing, first: '
            f'{missing[0]}; download/extract the images or fix the label paths')
