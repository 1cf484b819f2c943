"""Cambridge Landmarks reader (``dataset_train.txt`` / ``dataset_test.txt``).

Label format (Kendall et al. 2015): three header lines, then one line per image::

    seq1/frame00001.png X Y Z W P Q R

``X Y Z`` is the camera centre in the scene's (VisualSFM) world frame. ``W P Q R`` is the
VisualSFM/NVM camera rotation quaternion (wxyz), which is the **world-to-camera** rotation:
``x_cam = R(q) @ (X_world - C)``. Our convention stores the camera-to-map rotation, so
``R_map_cam = R(q).T``, i.e. the conjugate quaternion. The camera frame is VisualSFM's, which
has the same axes as the REP 103 optical frame (x right, y down, z forward).
Cambridge labels carry no intrinsics (each image has its own focal length in the NVM model), so
``intrinsics`` is ``None``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from posenet_ros.core.errors import DatasetError, LabelFormatError
from posenet_ros.datasets.types import (
    SPLITS,
    PoseSample,
    _NormReport,
    check_images_exist,
    checked_quaternion,
    select_split,
)

__all__ = ['read_cambridge', 'is_cambridge', 'LABEL_FILES', 'HEADER_LINES']

LABEL_FILES = {'train': 'dataset_train.txt', 'test': 'dataset_test.txt'}
HEADER_LINES = 3


def is_cambridge(root) -> bool:
    """True when ``root`` looks like a Cambridge Landmarks scene folder."""
    root = Path(root)
    return any((root / name).is_file() for name in LABEL_FILES.values())


def _parse_label_file(root: Path, split: str) -> list[PoseSample]:
    path = root / LABEL_FILES[split]
    if not path.is_file():
        raise DatasetError(f'{path} does not exist; a Cambridge scene folder needs '
                           f'{LABEL_FILES["train"]} and {LABEL_FILES["test"]}')
    report = _NormReport(path)
    samples = []
    with open(path, encoding='utf-8') as fh:
        for line_no, line in enumerate(fh, start=1):
            if line_no <= HEADER_LINES or not line.strip():
                continue
            parts = line.split()
            if len(parts) != 8:
                raise LabelFormatError(
                    path, line_no, f'expected "path X Y Z W P Q R" (8 fields), got '
                    f'{len(parts)}: {line.strip()!r}')
            try:
                values = np.array([float(v) for v in parts[1:]], dtype=np.float64)
            except ValueError:
                raise LabelFormatError(path, line_no, f'non-numeric pose in {line.strip()!r}') \
                    from None
            if not np.all(np.isfinite(values)):
                raise LabelFormatError(path, line_no, 'pose contains NaN or inf')
            if np.linalg.norm(values[3:]) < 1e-9:
                raise LabelFormatError(path, line_no, 'quaternion is zero')
            q_cam_world = checked_quaternion(values[3:], report, line_no)
            # VisualSFM stores world-to-camera; conjugate (w, -x, -y, -z) = camera-to-world.
            q_map_cam = q_cam_world * np.array([1.0, -1.0, -1.0, -1.0])
            samples.append(PoseSample(
                position=values[:3], quaternion=q_map_cam, split=split,
                image_path=root / parts[0], name=parts[0]))
    report.flush()
    return samples


def read_cambridge(root, split: str = 'train', check_images: bool = True) -> list[PoseSample]:
    """Read one split (``'train'``, ``'test'`` or ``'all'``) of a Cambridge Landmarks scene.

    Raises :class:`LabelFormatError` (file:line) for malformed lines, :class:`EmptySplitError`
    for a split without samples, :class:`DatasetError` when listed images are missing
    (``check_images``). Non-unit quaternions are normalised with a warning naming file:line.
    """
    root = Path(root)
    if split not in SPLITS:
        raise DatasetError(f'unknown split {split!r}; choose one of {SPLITS}')
    splits = ['train', 'test'] if split == 'all' else [split]
    samples = [s for name in splits for s in _parse_label_file(root, name)]
    samples = select_split(samples, split, root)
    if check_images:
        check_images_exist(samples, root)
    return samples

