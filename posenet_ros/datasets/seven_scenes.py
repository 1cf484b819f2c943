"""Microsoft 7-Scenes reader.

Layout of one scene (e.g. ``chess/``)::

    TrainSplit.txt, TestSplit.txt     lines like ``sequence1`` -> folder ``seq-01``
    seq-01/frame-000000.color.png     640x480 RGB
    seq-01/frame-000000.pose.txt      4x4 camera-to-world matrix (whitespace separated)

The pose files are ``T_world_cam`` with the Kinect colour camera in the optical convention
(x right, y down, z forward), which is already our ``T_map_cam``. Intrinsics are the values the
dataset publishes for the colour images: fx = fy = 585, cx = 320, cy = 240.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from posenet_ros.core.errors import DatasetError, LabelFormatError
from posenet_ros.core.geometry import matrix_to_pose
from posenet_ros.datasets.types import (
    SPLITS,
    PoseSample,
    check_images_exist,
    intrinsics_matrix,
    select_split,
)

__all__ = ['read_seven_scenes', 'is_seven_scenes', 'SEVEN_SCENES_K', 'SPLIT_FILES']

SEVEN_SCENES_K = intrinsics_matrix(585.0, 585.0, 320.0, 240.0)
SPLIT_FILES = {'train': 'TrainSplit.txt', 'test': 'TestSplit.txt'}
#: Largest ||R^T R - I|| accepted silently; the published matrices are orthonormal to ~1e-6.
ORTHONORMAL_TOLERANCE = 1e-2


def is_seven_scenes(root) -> bool:
    """True when ``root`` looks like a 7-Scenes scene folder."""
    root = Path(root)
    return any((root / name).is_file() for name in SPLIT_FILES.values())


def _read_split_file(root: Path, split: str) -> list[str]:
    path = root / SPLIT_FILES[split]
    if not path.is_file():
        raise DatasetError(f'{path} does not exist; a 7-Scenes scene folder needs '
                           f'{SPLIT_FILES["train"]} and {SPLIT_FILES["test"]}')
    seqs = []
    with open(path, encoding='utf-8') as fh:
        for line_no, line in enumerate(fh, start=1):
            text = line.strip()
            if not text:
                continue
            match = re.fullmatch(r'sequence\s*(\d+)', text, flags=re.IGNORECASE)
            if not match:
                raise LabelFormatError(path, line_no, f'expected "sequenceN", got {text!r}')
            seqs.append(f'seq-{int(match.group(1)):02d}')
    return seqs


def _read_pose_file(path: Path) -> np.ndarray | None:
    """4x4 camera-to-world matrix of a pose file; None (with a warning) if it is not finite."""
    try:
        rows = [line.split() for line in path.read_text(encoding='utf-8').splitlines()
                if line.strip()]
    except OSError as exc:
        raise DatasetError(f'cannot read pose file {path}: {exc}') from None
    if len(rows) != 4 or any(len(r) != 4 for r in rows):
        raise LabelFormatError(path, len(rows), 'expected a 4x4 matrix (4 lines of 4 numbers)')
    try:
        mat = np.array([[float(v) for v in r] for r in rows], dtype=np.float64)
    except ValueError:
        bad = next(i for i, r in enumerate(rows, 1)
                   if not all(_is_float(v) for v in r))
        raise LabelFormatError(path, bad, 'non-numeric value in pose matrix') from None
    if not np.all(np.isfinite(mat)):
        # Some 7/12-Scenes style recordings mark tracking failures with inf: skip, not fail.
        warnings.warn(f'{path}:1: pose is not finite (tracking failure?); frame skipped',
                      stacklevel=3)
        return None
    if not np.allclose(mat[3], [0, 0, 0, 1], atol=1e-6):
        raise LabelFormatError(path, 4, f'last row must be 0 0 0 1, got {mat[3].tolist()}')
    rot = mat[:3, :3]
    err = float(np.linalg.norm(rot.T @ rot - np.eye(3)))
    if err > ORTHONORMAL_TOLERANCE:
        warnings.warn(f'{path}:1: rotation is not orthonormal (|R^T R - I| = {err:.3g}); '
                      'using the nearest rotation', stacklevel=3)
    return mat


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_seven_scenes(root, split: str = 'train', check_images: bool = True) -> list[PoseSample]:
    """Read one split (``'train'``, ``'test'``, ``'all'``) of a 7-Scenes scene folder.

    Poses are camera-to-world already (our convention). Every sample carries the 7-Scenes
    intrinsics. Raises :class:`LabelFormatError` for malformed split/pose files,
    :class:`EmptySplitError` for an empty split and :class:`DatasetError` for missing folders or
    images.
    """
    root = Path(root)
    if split not in SPLITS:
        raise DatasetError(f'unknown split {split!r}; choose one of {SPLITS}')
    samples = []
    for name in (['train', 'test'] if split == 'all' else [split]):
        for seq in _read_split_file(root, name):
            seq_dir = root / seq
            if not seq_dir.is_dir():
                raise DatasetError(f'{root / SPLIT_FILES[name]} lists {seq} but {seq_dir} does '
                                   'not exist; extract the sequence archive (seq-XX.zip) there')
            for pose_path in sorted(seq_dir.glob('frame-*.pose.txt')):
                mat = _read_pose_file(pose_path)
                if mat is None:
                    continue
                # matrix_to_pose uses the nearest-rotation quaternion (robust to rounding).
                position, quat = matrix_to_pose(mat)
                stem = pose_path.name[:-len('.pose.txt')]
                samples.append(PoseSample(
                    position=position, quaternion=quat, split=name,
                    image_path=seq_dir / f'{stem}.color.png', name=f'{seq}/{stem}',
                    intrinsics=SEVEN_SCENES_K.copy()))
    samples = select_split(samples, split, root)
    if check_images:
        check_images_exist(samples, root)
    return samples
