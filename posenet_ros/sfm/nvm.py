"""Read VisualSFM ``.nvm`` (NVM_V3) reconstructions.

Camera lines are ``<file> <f> <qw qx qy qz> <Cx Cy Cz> <radial> 0``: one focal length, the
**world-to-camera** rotation R as a WXYZ quaternion (``x_cam = R (X - C)``) and the camera
**centre** C (not a translation). The principal point is the image centre (VisualSFM measures
features relative to it), unless the header says ``NVM_V3 FixedK fx cx fy cy``. The radial
coefficient ``r`` (VisualSFM: ``x_undist = x_dist (1 + r |x_dist|^2)``) is kept as distortion.
Only the first model of a multi-model file is read.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from posenet_ros.core.errors import SfMFormatError
from posenet_ros.core.geometry import canonicalize_quaternion, quat_to_matrix
from posenet_ros.datasets.types import intrinsics_matrix
from posenet_ros.sfm.colmap_io import SfmCamera, SfmImage, SfmModel

__all__ = ['read_nvm', 'is_nvm', 'image_size']


def is_nvm(path) -> bool:
    """True when ``path`` is a file whose first token is ``NVM_V3``."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, encoding='utf-8', errors='replace') as fh:
        return fh.readline().strip().upper().startswith('NVM_V3')


def image_size(path) -> tuple[int, int] | None:
    """``(width, height)`` of an image file, or None when it cannot be read."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return None if img is None else (int(img.shape[1]), int(img.shape[0]))


def _lines(path: Path):
    """(line_no, tokens) of the non-empty, non-comment lines."""
    with open(path, encoding='utf-8', errors='replace') as fh:
        for no, line in enumerate(fh, 1):
            tokens = line.split()
            if tokens and not tokens[0].startswith('#'):
                yield no, tokens


def _floats(path, no, tokens, what):
    try:
        return [float(t) for t in tokens]
    except ValueError:
        raise SfMFormatError(f'{path}:{no}: {what} must be numbers, got {" ".join(tokens)!r}') \
            from None


def _count(path, lines, what) -> int:
    try:
        no, tokens = next(lines)
    except StopIteration:
        raise SfMFormatError(f'{path}: file ends before the {what} count; the file is '
                             'truncated') from None
    if len(tokens) != 1 or not tokens[0].isdigit():
        raise SfMFormatError(f'{path}:{no}: expected the {what} count (one integer), got '
                             f'{" ".join(tokens)!r}')
    return int(tokens[0])


def read_nvm(path, images_dir=None) -> SfmModel:
    """Read the first model of an NVM_V3 file.

    ``images_dir`` is where the images live: their sizes give the principal point (image
    centre). Without it (or when an image is missing) that camera's ``K`` is ``None``.
    """
    path = Path(path)
    if not is_nvm(path):
        raise SfMFormatError(f'{path} is not an NVM file (first line must start with NVM_V3); '
                             'export the model from VisualSFM as .nvm')
    lines = _lines(path)
    _, header = next(lines)
    fixed_k = None
    if len(header) >= 6 and header[1].lower() == 'fixedk':
        fx, cx, fy, cy = _floats(path, 1, header[2:6], 'FixedK values')
        fixed_k = intrinsics_matrix(fx, fy, cx, cy)
    n_cams = _count(path, lines, 'camera')
    cameras, images = {}, []
    for i in range(n_cams):
        try:
            no, tokens = next(lines)
        except StopIteration:
            raise SfMFormatError(f'{path}: expected {n_cams} cameras, the file ends after '
                                 f'{i}') from None
        if len(tokens) < 9:
            raise SfMFormatError(f'{path}:{no}: camera line needs <file> <f> <qw qx qy qz> '
                                 f'<Cx Cy Cz> [<r> 0], got {len(tokens)} fields')
        # File names may contain spaces: the last 10 (or 8, without <r> 0) are numbers.
        n_num = 10 if len(tokens) >= 11 else 8
        name = ' '.join(tokens[:-n_num]).replace('\\', '/')
        vals = _floats(path, no, tokens[-n_num:], 'camera values')
        f, q, centre = vals[0], np.array(vals[1:5]), np.array(vals[5:8])
        radial = vals[8] if n_num == 10 else 0.0
        if f <= 0 or np.linalg.norm(q) < 1e-9 or not np.all(np.isfinite(vals)):
            raise SfMFormatError(f'{path}:{no}: camera {name!r} has a non-positive focal length '
                                 'or an invalid quaternion')
        q = canonicalize_quaternion(q)  # world-to-camera R, wxyz
        t = -quat_to_matrix(q) @ centre  # x_cam = R (X - C) = R X + t
        K, size = fixed_k, None
        if images_dir is not None:
            size = image_size(Path(images_dir) / name) or image_size(
                Path(images_dir) / Path(name).name)
        if size is not None and fixed_k is None:
            # Principal point at the geometric image centre, in OpenCV pixel coordinates.
            K = intrinsics_matrix(f, f, (size[0] - 1) / 2.0, (size[1] - 1) / 2.0)
        w, h = size if size is not None else (0, 0)
        cameras[i] = SfmCamera(i, 'NVM_RADIAL' if radial else 'NVM_PINHOLE', w, h, K,
                               (radial,) if radial else ())
        images.append(SfmImage(name, i, q, t))
    points = []
    try:
        n_pts = _count(path, lines, 'point')
    except SfMFormatError:
        n_pts = 0  # cameras-only files exist (e.g. Cambridge reconstruction.nvm excerpts)
    for _ in range(n_pts):
        try:
            no, tokens = next(lines)
        except StopIteration:
            break
        points.append(_floats(path, no, tokens[:3], 'point coordinates'))
    return SfmModel(cameras, images, np.asarray(points, dtype=np.float64).reshape(-1, 3),
                    str(path), 'nvm')
