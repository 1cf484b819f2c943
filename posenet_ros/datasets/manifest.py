"""posenet_ros's own dataset format: a folder with ``poses.csv`` and images.

``poses.csv`` (comma separated, one header row) has the columns
``image,split,x,y,z,qw,qx,qy,qz`` and optionally ``stamp,fx,fy,cx,cy`` (an empty cell means
"unknown"). ``image`` is a path relative to the folder. The pose is in the project's convention:
``x y z`` = camera centre in the map frame (metres), ``qw qx qy qz`` = camera-to-map rotation of
the optical frame (z forward, x right, y down). An optional ``dataset.json`` next to it records
where the data came from (frames, source bag, extraction statistics). See docs/datasets.md.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from posenet_ros.core.errors import DatasetError, LabelFormatError
from posenet_ros.datasets.types import (
    PoseSample,
    _NormReport,
    check_images_exist,
    checked_quaternion,
    intrinsics_matrix,
    select_split,
)

__all__ = [
    'read_manifest', 'write_manifest', 'read_manifest_info', 'is_manifest', 'MANIFEST_FILE',
    'INFO_FILE', 'REQUIRED_COLUMNS', 'OPTIONAL_COLUMNS',
]

MANIFEST_FILE = 'poses.csv'
INFO_FILE = 'dataset.json'
REQUIRED_COLUMNS = ('image', 'split', 'x', 'y', 'z', 'qw', 'qx', 'qy', 'qz')
OPTIONAL_COLUMNS = ('stamp', 'fx', 'fy', 'cx', 'cy')


def is_manifest(root) -> bool:
    """True when ``root`` is a manifest dataset folder."""
    return (Path(root) / MANIFEST_FILE).is_file()


def read_manifest_info(root) -> dict:
    """The optional ``dataset.json`` of a manifest folder (``{}`` when absent)."""
    path = Path(root) / INFO_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as exc:
        raise DatasetError(f'{path} is not valid JSON ({exc}); fix or delete it') from None


def _opt_float(row: dict, key: str, path, line_no: int) -> float | None:
    text = (row.get(key) or '').strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise LabelFormatError(path, line_no, f'column {key!r} is not a number: {text!r}') \
            from None


def read_manifest(root, split: str = 'train', check_images: bool = True) -> list[PoseSample]:
    """Read one split (any split name in the file, or ``'all'``) of a manifest folder."""
    root = Path(root)
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise DatasetError(f'{path} does not exist; a manifest dataset folder needs it '
                           '(see docs/datasets.md)')
    report = _NormReport(path)
    samples = []
    with open(path, encoding='utf-8', newline='') as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise LabelFormatError(path, 1, f'header lacks column(s) {missing}; expected '
                                   f'{",".join(REQUIRED_COLUMNS)}[,{",".join(OPTIONAL_COLUMNS)}]')
        reader.fieldnames = header
        for row in reader:
            line_no = reader.line_num
            if None in row or any(row.get(c) is None for c in REQUIRED_COLUMNS):
                raise LabelFormatError(path, line_no, f'expected {len(header)} columns')
            image = row['image'].strip()
            split_name = row['split'].strip()
            if not image or not split_name:
                raise LabelFormatError(path, line_no, 'empty image or split cell')
            values = [_opt_float(row, c, path, line_no) for c in REQUIRED_COLUMNS[2:]]
            if any(v is None for v in values):
                raise LabelFormatError(path, line_no, 'pose columns x..qz must all be set')
            values = np.array(values, dtype=np.float64)
            if not np.all(np.isfinite(values)):
                raise LabelFormatError(path, line_no, 'pose contains NaN or inf')
            if np.linalg.norm(values[3:]) < 1e-9:
                raise LabelFormatError(path, line_no, 'quaternion is zero')
            intr = [_opt_float(row, c, path, line_no) for c in ('fx', 'fy', 'cx', 'cy')]
            if any(v is not None for v in intr) and any(v is None for v in intr):
                raise LabelFormatError(path, line_no, 'set all of fx, fy, cx, cy or none')
            samples.append(PoseSample(
                position=values[:3], quaternion=checked_quaternion(values[3:], report, line_no),
                split=split_name, image_path=root / image, name=image,
                stamp=_opt_float(row, 'stamp', path, line_no),
                intrinsics=None if intr[0] is None else intrinsics_matrix(*intr)))
    report.flush()
    samples = select_split(samples, split, path)
    if check_images:
        check_images_exist(samples, root)
    return samples


def _fmt(value: float | None) -> str:
    return '' if value is None else repr(float(value))


def write_manifest(root, samples: list[PoseSample], info: dict | None = None) -> Path:
    """Write ``poses.csv`` (and ``dataset.json`` when ``info`` is given) into ``root``.

    Each sample's ``image_path`` must lie inside ``root`` (paths are stored relative to it).
    Returns the path of ``poses.csv``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / MANIFEST_FILE
    with open(path, 'w', encoding='utf-8', newline='') as fh:
        writer = csv.writer(fh, lineterminator='\n')
        writer.writerow(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
        for s in samples:
            if s.image_path is None:
                raise DatasetError(f'sample {s.name!r} has no image file; save images first')
            try:
                rel = Path(s.image_path).resolve().relative_to(root.resolve())
            except ValueError:
                raise DatasetError(f'image {s.image_path} is not inside {root}; manifest paths '
                                   'are relative to the dataset folder') from None
            k = s.intrinsics
            intr = [None] * 4 if k is None else [k[0, 0], k[1, 1], k[0, 2], k[1, 2]]
            writer.writerow([rel.as_posix(), s.split, *map(_fmt, s.position),
                             *map(_fmt, s.quaternion), _fmt(s.stamp), *map(_fmt, intr)])
    if info is not None:
        (root / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + '\n',
                                      encoding='utf-8')
    return path
