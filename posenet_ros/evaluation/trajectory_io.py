"""TUM trajectory files: ``stamp tx ty tz qx qy qz qw`` per line, as ``evo_ape tum`` reads them.

The TUM format orders the quaternion **xyzw** (scalar last); the core is wxyz, so the conversion
happens only here. Poses are ``T_map_cam`` (camera centre and camera-to-map rotation), which is
what evo expects of a trajectory. Numbers are written with 17 significant digits so a file
reloads to bit-identical poses. Lines starting with ``#`` are comments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from posenet_ros.core.errors import TrajectoryFormatError
from posenet_ros.core.geometry import canonicalize_quaternion, wxyz_to_xyzw, xyzw_to_wxyz

__all__ = ['write_tum', 'read_tum']


def write_tum(path, stamps, positions, quaternions_wxyz, comment: str | None = None) -> Path:
    """Write a TUM trajectory; ``stamps`` (N,) seconds, ``positions`` (N, 3), wxyz (N, 4).

    Rows with a non-finite pose (failed frames) are left out: evo cannot read them and a
    missing row is how a trajectory says "no estimate here". Returns the path written.
    """
    path = Path(path)
    stamps = np.asarray(stamps, dtype=np.float64).reshape(-1)
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    quat = np.asarray(quaternions_wxyz, dtype=np.float64).reshape(-1, 4)
    if not (len(stamps) == len(pos) == len(quat)):
        raise TrajectoryFormatError(f'{path}: {len(stamps)} stamps, {len(pos)} positions and '
                                    f'{len(quat)} quaternions; they must match')
    ok = np.isfinite(stamps) & np.all(np.isfinite(pos), 1) & np.all(np.isfinite(quat), 1)
    ok &= np.linalg.norm(np.where(np.isfinite(quat), quat, 0), axis=1) > 1e-12
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    if comment:
        lines += [f'# {c}' for c in comment.splitlines()]
    lines.append('# timestamp tx ty tz qx qy qz qw')
    for i in np.flatnonzero(ok):
        q = wxyz_to_xyzw(canonicalize_quaternion(quat[i]))
        values = [stamps[i], *pos[i], *q]
        lines.append(' '.join(f'{v:.17g}' for v in values))
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    return path


def read_tum(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a TUM trajectory -> ``(stamps (N,), positions (N, 3), quaternions wxyz (N, 4))``.

    Quaternions are normalised and canonical (w >= 0). Raises :class:`TrajectoryFormatError`
    naming the file and line of a malformed row.
    """
    path = Path(path)
    if not path.is_file():
        raise TrajectoryFormatError(f'trajectory file {path} does not exist')
    rows = []
    for line_no, line in enumerate(path.read_text(encoding='utf-8').splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith('#'):
            continue
        parts = text.replace(',', ' ').split()
        if len(parts) != 8:
            raise TrajectoryFormatError(f'{path}:{line_no}: expected 8 numbers '
                                        f'(stamp tx ty tz qx qy qz qw), got {len(parts)}')
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise TrajectoryFormatError(f'{path}:{line_no}: not a number in {text!r}') from None
        if not np.all(np.isfinite(values)) or np.linalg.norm(values[4:]) < 1e-12:
            raise TrajectoryFormatError(f'{path}:{line_no}: non-finite value or zero quaternion')
        rows.append(values)
    data = np.asarray(rows, dtype=np.float64).reshape(-1, 8)
    quats = canonicalize_quaternion(xyzw_to_wxyz(data[:, 4:])) if len(data) else data[:, 4:]
    return data[:, 0].copy(), data[:, 1:4].copy(), quats
