"""The scene map file: one versioned ``.npz`` beside the export, tied to a model and its frames.

Layout (numpy ``.npz``, uncompressed so it loads with one read; ``allow_pickle`` off):

* ``header``: JSON (utf-8 bytes) with ``format`` = ``posenet_ros-map``, ``version``,
  ``model_id`` (from the export's metadata), ``model_file``, ``feature`` (``sift``/``orb``),
  ``feature_spec`` (how local features are extracted: the query uses the same),
  dataset, build parameters and statistics, frame names and a fingerprint of the frames;
* per frame ``f`` (F frames, the posed mapping frames): ``frame_position`` (F, 3) camera centre
  in the map, ``frame_quaternion`` (F, 4) wxyz camera-to-map rotation (``T_map_cam``),
  ``frame_K`` (F, 3, 3), ``frame_size`` (F, 2) width/height in px, ``frame_global`` (F, D)
  float16 retrieval features of the network (D may be 0), ``frame_offsets`` (F + 1,);
* per observation (keypoints with a 3D point, sorted by frame; frame ``f`` owns rows
  ``frame_offsets[f]:frame_offsets[f + 1]``): ``obs_xy`` (M, 2) float32 px, ``obs_desc``
  (M, D) uint8, ``obs_point`` (M,) int32 point id;
* per point: ``points`` (P, 3) float64 map coordinates, ``point_views`` (P,) int32.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from posenet_ros.core.atomic import atomic_path
from posenet_ros.core.errors import (
    CorruptMapError,
    IncompatibleMapError,
    MapMismatchError,
    MapNotFoundError,
)

__all__ = ['MAP_FORMAT', 'MAP_VERSION', 'SceneMap', 'save_map', 'load_map', 'default_map_path',
           'frames_fingerprint']

MAP_FORMAT = 'posenet_ros-map'
# 2: features extracted after contrast normalisation, recorded as the header's feature_spec
# (a version-1 map's descriptors come from raw frames: queries would not match them as well)
MAP_VERSION = 2
_ARRAYS = ('frame_position', 'frame_quaternion', 'frame_K', 'frame_size', 'frame_global',
           'frame_offsets', 'obs_xy', 'obs_desc', 'obs_point', 'points', 'point_views')


def default_map_path(model_path) -> Path:
    """``models/scene.ts`` -> ``models/scene.map.npz`` (the map lives beside its export)."""
    p = Path(model_path)
    return p.with_name(p.stem + '.map.npz')


def frames_fingerprint(names, positions) -> str:
    """Short hash of the frame names and poses (identifies the frames a map was built from)."""
    h = hashlib.sha256()
    for n in names:
        h.update(str(n).encode() + b'\0')
    h.update(np.round(np.asarray(positions, np.float64), 6).tobytes())
    return h.hexdigest()[:16]


@dataclass
class SceneMap:
    """An in-memory scene map (see the module docstring for every array's meaning)."""

    header: dict
    frame_position: np.ndarray
    frame_quaternion: np.ndarray
    frame_K: np.ndarray  # noqa: N815 (K is the standard name of the intrinsics)
    frame_size: np.ndarray
    frame_global: np.ndarray
    frame_offsets: np.ndarray
    obs_xy: np.ndarray
    obs_desc: np.ndarray
    obs_point: np.ndarray
    points: np.ndarray
    point_views: np.ndarray
    path: Path | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def model_id(self) -> str:
        """Model id of the export this map was built for."""
        return str(self.header.get('model_id'))

    @property
    def feature(self) -> str:
        """Local feature kind (``'sift'`` or ``'orb'``)."""
        return str(self.header['feature'])

    @property
    def feature_spec(self):
        """How the map's local features were extracted (a query must use the same)."""
        from posenet_ros.verify.features import FeatureSpec

        return FeatureSpec.from_dict(self.header['feature_spec'])

    @property
    def n_frames(self) -> int:
        """Number of mapping frames."""
        return len(self.frame_position)

    def frame_slice(self, f: int) -> slice:
        """Rows of frame ``f`` in the ``obs_*`` arrays."""
        return slice(int(self.frame_offsets[f]), int(self.frame_offsets[f + 1]))

    def check_model(self, model_id: str, model_path=None) -> None:
        """Raise :class:`MapMismatchError` unless this map was built for ``model_id``."""
        if self.model_id != str(model_id):
            where = f' ({model_path})' if model_path else ''
            raise MapMismatchError(
                f'map {self.path or ""} was built for model {self.model_id} '
                f'({self.header.get("model_file", "?")}), not for model {model_id}{where}; '
                "rebuild it with 'posenet-ros map --model MODEL' or pass the matching map")


def save_map(scene_map: SceneMap, path) -> Path:
    """Write ``scene_map`` to ``path`` atomically (a crash leaves any previous map intact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = dict(scene_map.header, format=MAP_FORMAT, version=MAP_VERSION)
    arrays = {k: np.ascontiguousarray(getattr(scene_map, k)) for k in _ARRAYS}
    arrays['header'] = np.frombuffer(json.dumps(header).encode('utf-8'), dtype=np.uint8)
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as fh:
            np.savez(fh, **arrays)
    return path


def load_map(path, model_id: str | None = None) -> SceneMap:
    """Read a map file; with ``model_id``, also check it belongs to that model.

    Raises :class:`MapNotFoundError`, :class:`CorruptMapError`, :class:`IncompatibleMapError`
    or :class:`MapMismatchError`, each saying what to do.
    """
    path = Path(path)
    rebuild = "rebuild it with 'posenet-ros map --model MODEL'"
    if not path.is_file():
        raise MapNotFoundError(f'map file {path} does not exist; build one with '
                               "'posenet-ros map --model MODEL' (it is written beside the "
                               'export) or pass the right path')
    try:
        with np.load(path, allow_pickle=False) as npz:
            if 'header' not in npz.files:
                raise CorruptMapError(f'{path} is not a posenet_ros map (no header); {rebuild}')
            header = json.loads(npz['header'].tobytes().decode('utf-8'))
            if not isinstance(header, dict) or header.get('format') != MAP_FORMAT:
                raise CorruptMapError(f'{path} is not a posenet_ros map; {rebuild}')
            version = header.get('version')
            if version != MAP_VERSION:
                raise IncompatibleMapError(
                    f'{path} is map format version {version}, this posenet_ros reads version '
                    f'{MAP_VERSION} (its local features are extracted another way); {rebuild}')
            missing = [k for k in _ARRAYS if k not in npz.files]
            if missing:
                raise CorruptMapError(f'{path} lacks array(s) {missing}; {rebuild}')
            arrays = {k: npz[k] for k in _ARRAYS}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, UnicodeDecodeError,
            json.JSONDecodeError) as exc:
        raise CorruptMapError(f'{path} cannot be read ({type(exc).__name__}: {exc}); the file is '
                              f'truncated or not a map; {rebuild}') from exc
    m = SceneMap(header=header, path=path, **arrays)
    _check_shapes(m, path, rebuild)
    if model_id is not None:
        m.check_model(model_id)
    return m


def _check_shapes(m: SceneMap, path, rebuild: str) -> None:
    f = len(m.frame_position)
    ok = (m.frame_quaternion.shape == (f, 4) and m.frame_K.shape == (f, 3, 3)
          and m.frame_size.shape == (f, 2) and len(m.frame_global) == f
          and m.frame_offsets.shape == (f + 1,) and len(m.obs_xy) == len(m.obs_desc)
          == len(m.obs_point) and (f == 0 or int(m.frame_offsets[-1]) == len(m.obs_xy))
          and m.points.ndim == 2 and m.points.shape[1:] == (3,))
    if ok and len(m.obs_point):
        ok = 0 <= int(m.obs_point.min()) and int(m.obs_point.max()) < len(m.points)
    if not ok:
        raise CorruptMapError(f'{path}: arrays have inconsistent shapes; {rebuild}')
