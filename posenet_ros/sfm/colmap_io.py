"""Read COLMAP sparse models (text or binary) into plain numpy structures.

COLMAP conventions, converted here once:

* ``images``: ``QW QX QY QZ TX TY TZ`` is the **world-to-camera** transform, ``x_cam = R X + t``,
  so the camera centre is ``C = -R^T t`` and our camera-to-map rotation is ``R^T``. The camera
  frame is the OpenCV optical frame (x right, y down, z forward), the same as ours.
* ``cameras``: COLMAP puts the centre of the top-left pixel at (0.5, 0.5); we (OpenCV) put it at
  (0, 0), so ``cx_ours = cx_colmap - 0.5`` (same for cy). Keypoints in ``images`` are in COLMAP's
  convention too.

Parsing is delegated to ``pycolmap.Reconstruction`` (it reads both formats, including models
written by COLMAP >= 3.12 with rigs and frames); only the conversion lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from posenet_ros.core.errors import SfMFormatError
from posenet_ros.core.geometry import canonicalize_quaternion, matrix_to_quat, quat_to_matrix

__all__ = ['SfmCamera', 'SfmImage', 'SfmModel', 'read_colmap_model', 'find_colmap_models',
           'is_colmap_model', 'model_from_reconstruction', 'COLMAP_PIXEL_OFFSET']

#: COLMAP pixel coordinates minus this = OpenCV pixel coordinates (pixel centres at integers).
COLMAP_PIXEL_OFFSET = 0.5


@dataclass
class SfmCamera:
    """One calibrated camera of a reconstruction; ``K`` uses OpenCV pixel coordinates."""

    camera_id: int
    model: str
    width: int
    height: int
    K: np.ndarray | None  # (3, 3); None when unknown (NVM without image sizes)
    distortion: tuple[float, ...] = ()  # the model's extra (distortion) parameters, if any

    @property
    def has_distortion(self) -> bool:
        """True when any distortion parameter is non-zero (labels keep the distorted images)."""
        return any(abs(d) > 1e-12 for d in self.distortion)


@dataclass
class SfmImage:
    """One registered image: world-to-camera rotation (wxyz) and translation, as SfM stores."""

    name: str
    camera_id: int
    q_cam_world: np.ndarray  # (4,) wxyz, R in x_cam = R X + t
    t_cam_world: np.ndarray  # (3,)

    @property
    def rot_cam_world(self) -> np.ndarray:
        """World-to-camera rotation matrix R (3, 3)."""
        return quat_to_matrix(self.q_cam_world)

    @property
    def center(self) -> np.ndarray:
        """Camera centre in the world (map) frame: ``C = -R^T t``."""
        return -self.rot_cam_world.T @ np.asarray(self.t_cam_world, dtype=np.float64)

    def pose(self) -> tuple[np.ndarray, np.ndarray]:
        """``(position, wxyz)`` in the project's convention: centre and camera-to-map rotation."""
        return self.center, matrix_to_quat(self.rot_cam_world.T)


@dataclass
class SfmModel:
    """A reconstruction reduced to what labelling needs."""

    cameras: dict[int, SfmCamera]
    images: list[SfmImage]
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (N, 3) world
    source: str = ''
    kind: str = ''  # 'colmap-text', 'colmap-binary' or 'nvm'

    def image_names(self) -> list[str]:
        """Names of the registered images, in model order."""
        return [im.name for im in self.images]


def _model_format(path: Path) -> str | None:
    if all((path / f'{n}.bin').is_file() for n in ('cameras', 'images')):
        return 'colmap-binary'
    if all((path / f'{n}.txt').is_file() for n in ('cameras', 'images')):
        return 'colmap-text'
    return None


def is_colmap_model(path) -> bool:
    """True when ``path`` is a folder holding ``cameras`` and ``images`` (.bin or .txt)."""
    path = Path(path)
    return path.is_dir() and _model_format(path) is not None


def find_colmap_models(path) -> list[Path]:
    """The model folder itself, or the sub-models (``0``, ``1``...) of it or of its sparse/."""
    path = Path(path)
    if is_colmap_model(path):
        return [path]
    for root in (path, path / 'sparse'):
        if is_colmap_model(root):
            return [root]
        if root.is_dir():
            subs = [p for p in sorted(root.iterdir()) if p.is_dir() and is_colmap_model(p)]
            if subs:
                return subs
    return []


def model_from_reconstruction(rec, source: str = '', kind: str = '') -> SfmModel:
    """Convert a ``pycolmap.Reconstruction`` (registered images only)."""
    cameras = {}
    for cam_id, cam in rec.cameras.items():
        K = np.asarray(cam.calibration_matrix(), dtype=np.float64).copy()
        K[0, 2] -= COLMAP_PIXEL_OFFSET
        K[1, 2] -= COLMAP_PIXEL_OFFSET
        params = np.asarray(cam.params, dtype=np.float64)
        extra = tuple(float(params[i]) for i in cam.extra_params_idxs())
        cameras[int(cam_id)] = SfmCamera(int(cam_id), cam.model.name, int(cam.width),
                                         int(cam.height), K, extra)
    images = []
    for _, im in sorted(rec.images.items()):
        if not im.has_pose:
            continue
        cam_from_world = im.cam_from_world()
        xyzw = np.asarray(cam_from_world.rotation.quat, dtype=np.float64)  # Eigen order: xyzw
        q = canonicalize_quaternion(np.r_[xyzw[3], xyzw[:3]])
        images.append(SfmImage(im.name, int(im.camera_id), q,
                               np.asarray(cam_from_world.translation, dtype=np.float64).copy()))
    pts = [p.xyz for p in rec.points3D.values()]
    points = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
    return SfmModel(cameras, images, points, source, kind)


def read_colmap_model(path) -> SfmModel:
    """Read a COLMAP sparse model folder (``cameras``/``images``/``points3D`` .bin or .txt).

    Raises :class:`SfMFormatError` naming the folder when it is missing, incomplete or corrupt.
    """
    import pycolmap

    path = Path(path)
    if not path.is_dir():
        raise SfMFormatError(f'COLMAP model folder {path} does not exist; pass the folder that '
                             'holds cameras/images/points3D (.bin or .txt), e.g. sparse/0')
    kind = _model_format(path)
    if kind is None:
        raise SfMFormatError(f'{path} holds no COLMAP model: expected cameras.bin + images.bin '
                             '(+ points3D.bin) or the .txt versions. For a multi-model output '
                             'pass one sub-folder, e.g. sparse/0')
    ext = '.bin' if kind == 'colmap-binary' else '.txt'
    if not (path / f'points3D{ext}').is_file():
        # COLMAP always writes it; pycolmap needs it. An empty one is valid.
        raise SfMFormatError(f'{path} lacks points3D{ext}; COLMAP writes it next to cameras and '
                             'images (an empty file is fine for a text model)')
    try:
        rec = pycolmap.Reconstruction(str(path))
    except Exception as exc:  # pycolmap raises RuntimeError/ValueError with glog text
        raise SfMFormatError(f'cannot read COLMAP model {path} ({kind}): '
                             f'{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}; '
                             're-export it with COLMAP (File > Export model)') from None
    model = model_from_reconstruction(rec, str(path), kind)
    missing = {im.camera_id for im in model.images} - set(model.cameras)
    if missing:
        raise SfMFormatError(f'{path}: images refer to camera id(s) {sorted(missing)} that '
                             f'cameras{ext} does not define')
    return model
