"""The frame pipeline: one call per frame from an RGB image to everything known about its pose.

No ROS: the node, offline evaluation and live evaluation all feed frames through a
:class:`Localizer` and read a :class:`FrameResult` computed once and carried forward.

>>> loc = Localizer('models/scene.ts', scene_map='models/scene.map.npz', device='auto')
>>> result = loc.localize(rgb_uint8_hxwx3, stamp, camera_in_base=T_base_cam)
>>> result.camera.position, result.camera.quaternion_wxyz    # coarse T_map_cam
>>> result.base.matrix, result.base.covariance                # T_map_base (with a mount)
>>> result = loc.verify(result, rgb_uint8_hxwx3, K)           # against the scene map
>>> result.verified, result.refined.position, result.verification.n_inliers

One network pass per frame: the export returns the coarse pose and the retrieval feature
together (``posenet_ros.model.export``), and :meth:`Localizer.verify` reuses the feature the
result carries, so verification runs local features and PnP only. ``verify`` may run on
another thread than ``localize`` (the node's verification worker does), one call at a time.

Conventions: ``T_a_b`` maps points of frame b into frame a; quaternions are wxyz;
covariances are 6x6 in ROS order (x, y, z, then small rotations about the map's fixed axes).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from posenet_ros.core import geometry

if TYPE_CHECKING:  # torch loads with the model, not with the result types the node imports
    from posenet_ros.model.relocalizer import Relocalizer

__all__ = ['Localizer', 'FrameResult', 'Pose', 'diagonal_covariance',
           'DEFAULT_POSITION_STDDEV', 'DEFAULT_ORIENTATION_STDDEV']

# Spread of a coarse PoseNet pose, used as its covariance (the node's position_stddev /
# orientation_stddev parameters default to the same): metres and radians.
DEFAULT_POSITION_STDDEV = 0.5
DEFAULT_ORIENTATION_STDDEV = 0.2


def diagonal_covariance(position_stddev: float, orientation_stddev: float) -> np.ndarray:
    """6x6 diagonal covariance of ``position_stddev`` (m) and ``orientation_stddev`` (rad)."""
    return np.diag([float(position_stddev) ** 2] * 3 + [float(orientation_stddev) ** 2] * 3)


@dataclass(frozen=True)
class Pose:
    """A pose ``T_map_x``.

    ``position`` (3,) metres, ``quaternion_wxyz`` (4,) unit x-to-map rotation, ``covariance``
    (6, 6) ROS order (None when unknown).
    """

    position: np.ndarray
    quaternion_wxyz: np.ndarray
    covariance: np.ndarray | None = None

    @property
    def matrix(self) -> np.ndarray:
        """The 4x4 transform."""
        return geometry.pose_to_matrix(self.position, self.quaternion_wxyz)

    @classmethod
    def from_matrix(cls, matrix: np.ndarray, covariance: np.ndarray | None = None) -> Pose:
        """Pose of a 4x4 transform."""
        position, q = geometry.matrix_to_pose(matrix)
        return cls(position, q, covariance)


@dataclass(frozen=True)
class FrameResult:
    """Everything the pipeline knows about one frame, computed once.

    ``stamp``: the caller's stamp, carried as given (the node's header stamp, evaluation's ns).
    ``camera``: the coarse ``T_map_cam`` with the coarse covariance; ``raw_quat_norm`` and
    ``latency_ms`` (model time) come from the same network pass, ``feature`` (D,) too (None for
    exports written before the feature output). ``camera_in_base``: the mount ``T_base_cam``
    given to :meth:`Localizer.localize`; ``base``: ``T_map_base = T_map_cam T_base_cam^-1``
    with the covariance carried through the mount (None without a mount).
    After :meth:`Localizer.verify`: ``verification`` (a :class:`posenet_ros.verify.Verification`:
    status, reason, inliers, ...) and, when verified, ``refined`` / ``refined_base``: the
    verified ``T_map_cam`` / ``T_map_base`` with the PnP covariance.
    """

    stamp: object
    camera: Pose
    raw_quat_norm: float
    latency_ms: float
    feature: np.ndarray | None = dataclasses.field(default=None, repr=False)
    camera_in_base: np.ndarray | None = None
    base: Pose | None = None
    verification: object | None = None
    refined: Pose | None = None
    refined_base: Pose | None = None

    @property
    def verified(self) -> bool:
        """True when the frame was verified against the scene map (``refined`` is set)."""
        return self.refined is not None

    @property
    def best(self) -> Pose:
        """The refined camera pose when verified, else the coarse one."""
        return self.refined if self.refined is not None else self.camera

    @property
    def best_base(self) -> Pose | None:
        """The refined base pose when verified, else the coarse one (None without a mount)."""
        return self.refined_base if self.refined is not None else self.base

    def with_mount(self, camera_in_base: np.ndarray | None) -> FrameResult:
        """A copy of this result with the mount ``T_base_cam`` (4x4) and the base poses it gives.

        For callers that learn the mount after the coarse pose (the node publishes the camera
        pose first, then looks the mount up). ``None`` removes the base poses.
        """
        if camera_in_base is None:
            return dataclasses.replace(self, camera_in_base=None, base=None, refined_base=None)
        mount = np.asarray(camera_in_base, float).reshape(4, 4)
        return dataclasses.replace(
            self, camera_in_base=mount, base=_through_mount(self.camera, mount),
            refined_base=None if self.refined is None else _through_mount(self.refined, mount))


def _through_mount(camera: Pose, t_base_cam: np.ndarray) -> Pose:
    """``T_map_base`` (and its covariance) of a camera pose and the mount ``T_base_cam``."""
    t_map_cam = camera.matrix
    cov = (None if camera.covariance is None else geometry.covariance_through_mount(
        camera.covariance, t_map_cam, geometry.invert(t_base_cam)))
    return Pose.from_matrix(geometry.base_in_map(t_map_cam, t_base_cam), cov)


class Localizer:
    """The frame pipeline over an export (and optionally its scene map).

    ``model``: an export path (loaded here with ``device``, ``warmup``, ``warmup_size``, see
    :class:`~posenet_ros.model.relocalizer.Relocalizer`) or a loaded ``Relocalizer``.
    ``scene_map``: a path or :class:`~posenet_ros.verify.SceneMap` to verify against (see
    :meth:`attach_map`); ``verifier_config``: a :class:`~posenet_ros.verify.VerifierConfig`.
    ``position_stddev`` / ``orientation_stddev``: the coarse pose's covariance.
    """

    def __init__(self, model: str | Path | Relocalizer, *, device='cpu', warmup: int = 3,
                 warmup_size: tuple[int, int] | None = None, scene_map=None,
                 verifier_config=None, position_stddev: float = DEFAULT_POSITION_STDDEV,
                 orientation_stddev: float = DEFAULT_ORIENTATION_STDDEV):
        # A path loads the export here; anything else is a loaded model runtime (a Relocalizer,
        # or an object with its interface, e.g. a test's wrapper around one).
        if isinstance(model, (str, Path)):
            from posenet_ros.model.relocalizer import Relocalizer
            model = Relocalizer(model, device, warmup, warmup_size)
        self.relocalizer = model
        self.coarse_covariance = diagonal_covariance(position_stddev, orientation_stddev)
        self.map_localizer = None
        self.uses_features = False  # the map has retrieval features and the model makes them
        if scene_map is not None:
            self.attach_map(scene_map, verifier_config)

    @property
    def model_id(self) -> str:
        """The export's model id."""
        return self.relocalizer.model_id

    @property
    def metadata(self) -> dict:
        """The export's metadata."""
        return self.relocalizer.metadata

    @property
    def device(self):
        """The torch device the model runs on."""
        return self.relocalizer.device

    @property
    def scene_map(self):
        """The attached :class:`~posenet_ros.verify.SceneMap`, or None."""
        return None if self.map_localizer is None else self.map_localizer.map

    def attach_map(self, scene_map, config=None) -> None:
        """Verify against ``scene_map`` (a path or :class:`~posenet_ros.verify.SceneMap`).

        Raises a :class:`~posenet_ros.core.errors.MapError` subclass when the file is missing,
        corrupt, of another version, or built for another model id. A map with retrieval
        features and an export without the feature output (written before it existed) still
        work, with candidate map frames chosen by the coarse pose only (warned once, here).
        """
        from posenet_ros.verify import MapLocalizer, SceneMap, load_map

        if not isinstance(scene_map, SceneMap):
            scene_map = load_map(scene_map)
        reloc = self.relocalizer
        scene_map.check_model(reloc.model_id, reloc.path)
        map_dim = int(scene_map.frame_global.shape[1]) if scene_map.frame_global.size else 0
        self.uses_features = bool(map_dim) and map_dim == reloc.feature_dim
        if map_dim and not self.uses_features:
            warnings.warn(
                f'{reloc.path} returns no {map_dim}-d retrieval feature (an export written '
                f'before the export returned one, or another model): verification picks map '
                'frames by the coarse pose only; re-export the model (posenet-ros train / '
                'export) to bring retrieval back', stacklevel=2)
        self.map_localizer = MapLocalizer(scene_map, config)

    def localize(self, frame, stamp=None, *, K=None, camera_in_base=None, covariance=None,
                 verify: bool = False, prior=None) -> FrameResult:
        """The coarse pose of one RGB uint8 ``(H, W, 3)`` frame (numpy array or torch tensor).

        ``camera_in_base``: the mount ``T_base_cam`` (4x4), for the base pose. ``covariance``:
        the coarse pose's 6x6 (default: the constructor's stddevs). ``verify=True`` also runs
        :meth:`verify` (``K``, ``prior`` as there). Raises
        :class:`~posenet_ros.core.errors.InvalidFrameError` for a frame that is not RGB uint8
        or too small, :class:`~posenet_ros.core.errors.NonFiniteOutputError` when the network
        gives no usable pose.
        """
        pred = self.relocalizer.predict(frame)
        cov = self.coarse_covariance if covariance is None else np.asarray(covariance, float)
        camera = Pose(pred.position, pred.quaternion_wxyz, cov.reshape(6, 6))
        result = FrameResult(stamp, camera, pred.raw_quat_norm, pred.latency_ms, pred.feature)
        if camera_in_base is not None:
            result = result.with_mount(camera_in_base)
        return self.verify(result, frame, K, prior) if verify else result

    def intrinsics(self, width: int, height: int) -> np.ndarray:
        """The map's K for a ``width x height`` frame (scaled).

        Another aspect ratio than the map's raises
        :class:`~posenet_ros.core.errors.MissingIntrinsicsError`.
        """
        return self._map().default_intrinsics(width, height)

    def verify(self, result: FrameResult, frame, K=None, prior=None) -> FrameResult:
        """``result`` with the frame's verification against the scene map (no network pass).

        ``frame``: the same RGB uint8 ``(H, W, 3)`` frame (host memory); ``K``: its 3x3
        intrinsics (default: the map's, see :meth:`intrinsics`); ``prior``: optional
        ``(position, quaternion_wxyz)`` used instead of the coarse pose to choose candidate map
        frames (e.g. the last verified pose). Raises :class:`~posenet_ros.core.errors.MapError`
        without a map.
        """
        p, q = prior if prior is not None else (result.camera.position,
                                                result.camera.quaternion_wxyz)
        feature = result.feature if self.uses_features else None
        ver = self._map().localize(_host(frame), K, p, q, feature)
        if not ver.verified:
            return dataclasses.replace(result, verification=ver)
        refined = Pose(ver.position, ver.quaternion_wxyz, np.asarray(ver.covariance, float))
        result = dataclasses.replace(result, verification=ver, refined=refined)
        return result if result.camera_in_base is None else result.with_mount(
            result.camera_in_base)

    def _map(self):
        if self.map_localizer is None:
            from posenet_ros.core.errors import MapError

            raise MapError('no scene map attached; pass scene_map= (build one with '
                           "'posenet-ros map --model MODEL')")
        return self.map_localizer


def _host(frame) -> np.ndarray:
    """A numpy frame of a numpy array or a (device) tensor."""
    if hasattr(frame, 'detach'):
        frame = frame.detach().to('cpu').numpy()
    return np.ascontiguousarray(np.asarray(frame))
