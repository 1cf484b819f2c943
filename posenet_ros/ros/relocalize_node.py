"""The ROS 2 relocalization node ``posenet_relocalizer`` (console script ``relocalize_node``).

Data flow: the camera subscription callback only stores the newest message (drop-oldest, counted)
and wakes one worker thread; the worker converts, runs the model and publishes, so a slow model
never builds a queue. Every output is stamped with the input image's stamp. Callbacks run on one
SingleThreadedExecutor thread (its per-message overhead is ~2 ms lower than the multi-threaded
executor's on a 2-core CPU), so nothing in a callback may block: ``~/relocalize`` is a coroutine
that awaits a future the worker completes.

Outputs (see docs/node.md for the full tables):

* ``~/pose`` (PoseStamped) and ``~/pose_with_covariance`` (PoseWithCovarianceStamped): the camera
  optical frame in the map frame (``T_map_cam``; ROS xyzw quaternion);
* ``~/base_pose_with_covariance``: the base frame in the map frame (``T_map_base``, through the
  camera extrinsic: TF or ``camera_in_base``; refused, with the reason, when neither exists);
* ``/tf`` (tf2_msgs/TFMessage): ``map -> <camera><suffix>`` (camera mode) or ``map -> odom``
  (map_to_odom mode, a base-frame output), or nothing;
* ``/initialpose`` (configurable): the base frame's pose in map, once per ``~/relocalize`` call;
  with ``refine`` on (the default ``request``) only from a pose verified against the scene map;
* ``~/verified_pose`` (PoseWithCovarianceStamped, ``refine: continuous``): verified, refined
  camera poses with the covariance of their PnP solution;
* ``/diagnostics``: rates, inference p50/p95, frame age, dropped/rejected frames, model id,
  verification rate, inliers and refinement ms.

Verification (``posenet_ros.verify``, docs/verification.md) runs on a thread of its own, fed
newest-frame-wins by the worker, so the coarse output keeps PoseNet's rate in every mode.

Run it with ``relocalize_node --ros-args --params-file config/relocalize.yaml -p model_path:=...``
(or ``python -m posenet_ros.ros.relocalize_node ...`` before the console script is installed).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rclpy
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped, TransformStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.duration import Duration
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from rclpy.signals import SignalHandlerOptions
from rclpy.task import Future
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import SetBool, Trigger

from posenet_ros.core import geometry
from posenet_ros.core.errors import (
    ConfigError,
    ImageConversionError,
    InvalidFrameError,
    MapError,
    MapNotFoundError,
    MissingIntrinsicsError,
    ModelNotFoundError,
    NonFiniteOutputError,
    PoseNetError,
)
from posenet_ros.core.image_conversion import decode_compressed, decode_image, to_rgb
from posenet_ros.ros import params as P
from posenet_ros.ros.diagnostics import NodeStats
from posenet_ros.ros.frames import (
    FrameStager,
    covariance_through_mount,
    map_to_odom,
    xyzw_pose_to_matrix,
)

__all__ = ['NODE_NAME', 'RelocalizerNode', 'main']

NODE_NAME = 'posenet_relocalizer'

# Outputs: reliable, depth 10 (CONVENTIONS). /tf: what tf2_ros.TransformBroadcaster uses
# (DynamicBroadcasterQoS: reliable, volatile, keep last 100).
OUTPUT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                        history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE)
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                    history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE)


def input_qos(reliability: str) -> QoSProfile:
    """Sensor-data QoS with depth 1; ``reliability`` 'best_effort' (default) or 'reliable'."""
    rel = (ReliabilityPolicy.RELIABLE if reliability == 'reliable'
           else ReliabilityPolicy.BEST_EFFORT)
    return QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=rel,
                      durability=DurabilityPolicy.VOLATILE)


@dataclass
class _Request:
    """A pending ~/relocalize call, served by the first valid frame received after it.

    ``future`` is completed exactly once (under the node's lock): with the result dict by the
    worker, or with ``None`` by the timeout timer.
    """

    t_request: float
    future: Future = field(default_factory=Future)
    last_error: str = ''


@dataclass
class _Slot:
    msg: object
    t_received: float  # time.monotonic() at receipt
    compressed: bool


@dataclass
class _RefineJob:
    """One frame for the verification thread: the RGB frame and its coarse pose."""

    rgb: np.ndarray  # (H, W, 3) uint8
    position: np.ndarray  # coarse T_map_cam
    q_wxyz: np.ndarray
    stamp: TimeMsg
    camera_frame: str
    raw_norm: float
    pending: list  # ~/relocalize requests this frame may answer


@dataclass
class _Intrinsics:
    """The latest CameraInfo: K (3x3) for frames of width x height."""

    K: np.ndarray
    width: int
    height: int


class RelocalizerNode(Node):
    """PoseNet relocalization node; see the module docstring and docs/node.md."""

    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self._log = self.get_logger()
        self._cfg = self._declare_parameters()
        self._stats = NodeStats()
        self._throttle: dict[str, tuple[float, int]] = {}

        self._load_model()
        self._load_map()
        self._map_frame_default = str(self._frames.get('map_frame') or 'map')
        self._camera_frame_default = str(self._frames.get('camera_frame') or 'camera_optical')

        # Outputs.
        self._pose_pub = self.create_publisher(PoseStamped, '~/pose', OUTPUT_QOS)
        self._cov_pub = self.create_publisher(PoseWithCovarianceStamped, '~/pose_with_covariance',
                                              OUTPUT_QOS)
        # The base frame's pose (T_map_base) for consumers that read a pose as the robot's
        # (robot_localization); only with a known extrinsic (see _extrinsic).
        self._base_pub = self.create_publisher(PoseWithCovarianceStamped,
                                               '~/base_pose_with_covariance', OUTPUT_QOS)
        self._init_pub = self.create_publisher(PoseWithCovarianceStamped,
                                               self._cfg['initial_pose_topic'], OUTPUT_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', OUTPUT_QOS)
        self._verified_pub = None
        if self._cfg['refine'] == 'continuous':
            self._verified_pub = self.create_publisher(PoseWithCovarianceStamped,
                                                       '~/verified_pose', OUTPUT_QOS)
        self._setup_tf()

        # Services and timers. One executor thread runs every callback; ~/relocalize awaits the
        # worker (a coroutine), and the worker wakes the executor through this guard condition
        # when it completes a request. A suspended coroutine keeps its callback group busy, so
        # the service and its timeout timers get a reentrant group of their own: in the node's
        # default (mutually exclusive) group they would block the image subscription.
        self._wake = self.create_guard_condition(lambda: None)
        self._srv_group = ReentrantCallbackGroup()
        self.create_service(Trigger, '~/relocalize', self._on_relocalize,
                            callback_group=self._srv_group)
        self.create_service(SetBool, '~/enable', self._on_enable)
        self.create_timer(self._cfg['diagnostics_period'], self._publish_diagnostics)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)

        # Worker state.
        self._cond = threading.Condition()
        self._slot: _Slot | None = None
        self._requests: list[_Request] = []
        self._running = True
        self._last_output = -math.inf
        self._worker = threading.Thread(target=self._work, name='posenet_worker', daemon=True)
        self._worker.start()
        # Verification state: one job slot (newest wins), its own thread.
        self._rcond = threading.Condition()
        self._rjob: _RefineJob | None = None
        self._intrinsics: _Intrinsics | None = None
        self._intrinsics_source = 'none yet'
        self._refiner = None
        if self._cfg['refine'] != 'off':
            self._refiner = threading.Thread(target=self._refine_work, name='posenet_verify',
                                             daemon=True)
            self._refiner.start()

        self._subscribe()  # last: the model is loaded and warm before the first frame arrives
        self._log.info(
            f'ready: model {self._model_id} on {self._device}, input {self._input_topic} '
            f'({self._cfg["image_transport"]}, {self._cfg["input_reliability"]}), '
            f'tf_mode {self._tf_mode}, map frame {self._map_frame()}, refine '
            f'{self._cfg["refine"]}' + (f' (camera_info {self._info_topic})'
                                        if self._cfg['refine'] != 'off' else ''))

    # --- set-up ---------------------------------------------------------------------------------
    def _declare_parameters(self) -> dict:
        cfg = {}
        for spec in P.PARAMS:
            # An empty list default (camera_in_base: unset) has no element type: rclpy would
            # make it a byte array, so declare the type and let the value be unset.
            default = Parameter.Type.DOUBLE_ARRAY if spec.default == [] else spec.default
            try:
                param = self.declare_parameter(spec.name, default, P.descriptor(spec))
            except Exception as exc:  # rclpy: wrong type / out of range in a params file
                hint = (' (write doubles with a decimal point, e.g. 3.0 or [0.0, 1.0])'
                        if isinstance(spec.default, (float, list)) else '')
                raise ConfigError(f'parameter {spec.name}: {exc}{hint}') from exc
            value = [] if param.value is None and spec.default == [] else param.value
            cfg[spec.name] = P.normalize(spec.name, value)
        for name, value in cfg.items():
            reason = P.validate(name, value)
            if reason:
                raise ConfigError(f'invalid parameter: {reason}')
        if not cfg['model_path']:
            raise ConfigError('parameter model_path is empty: pass the exported model, e.g. '
                              '--ros-args -p model_path:=/path/to/model.ts')
        if not Path(cfg['model_path']).expanduser().is_file():  # fail fast, before importing torch
            raise ModelNotFoundError(f'model file {cfg["model_path"]} (parameter model_path) does '
                                     'not exist; export one with posenet-ros train or fix the '
                                     'path')
        cfg['model_path'] = str(Path(cfg['model_path']).expanduser())
        overrides = getattr(self, '_parameter_overrides', {}) or {}
        unknown = sorted(set(overrides) - set(P.SPECS) - {'use_sim_time'})
        if unknown:
            self._log.warning(f'ignoring unknown parameters (typo?): {", ".join(unknown)}')
        return cfg

    def _load_model(self) -> None:
        import torch

        from posenet_ros.model.relocalizer import Relocalizer

        if self._cfg['num_threads'] > 0:
            torch.set_num_threads(self._cfg['num_threads'])
        t0 = time.monotonic()
        # The Relocalizer resolves the device ('auto' keeps int8 exports on the CPU).
        self._relocalizer = Relocalizer(self._cfg['model_path'], self._cfg['device'],
                                        self._cfg['warmup_iterations'])
        self._device = self._relocalizer.device
        meta = self._relocalizer.metadata or {}
        self._frames = meta.get('frames') or {}
        self._model_id = str(meta.get('model_id', 'unknown'))
        self._precision = 'int8' if self._relocalizer.quantization else 'fp32'
        self._stager = FrameStager(torch.device(self._device))
        self._log.info(f'loaded {self._cfg["model_path"]} (model {self._model_id}, backbone '
                       f'{meta.get("backbone", "?")}, {self._precision}) on {self._device} in '
                       f'{time.monotonic() - t0:.2f} s')

    def _load_map(self) -> None:
        """Attach the scene map unless ``refine`` is off: a missing or bad map is fatal."""
        from posenet_ros.verify.mapfile import default_map_path

        self._map_path = None
        if self._cfg['refine'] == 'off':
            self._log.info('refine off: coarse PoseNet poses only, nothing is verified')
            return
        path = Path(self._cfg['map_path']).expanduser() if self._cfg['map_path'] else \
            default_map_path(self._cfg['model_path'])
        fix = (f"build it with 'posenet-ros map --model {self._cfg['model_path']} --dataset "
               "<the training data>' (or train with --map), pass map_path, or set refine:=off "
               'to run on coarse poses only')
        if not path.is_file():
            raise MapNotFoundError(f'scene map {path} does not exist (refine '
                                   f'{self._cfg["refine"]}); {fix}')
        t0 = time.monotonic()
        try:
            self._relocalizer.attach_map(path)
        except MapError as exc:
            raise type(exc)(f'{exc} (refine {self._cfg["refine"]}; or set refine:=off to run '
                            'on coarse poses only)') from exc
        self._map_path = path
        m = self._relocalizer.localizer.map
        self._log.info(f'loaded scene map {path} ({m.n_frames} frames, {len(m.points)} points, '
                       f'{m.feature}) in {time.monotonic() - t0:.2f} s')

    def _setup_tf(self) -> None:
        self._tf_msg_type = None
        self._tf_buffer = None
        self._tf_mode = self._cfg['tf_mode']
        if self._tf_mode != 'none':
            try:
                from tf2_msgs.msg import TFMessage
                self._tf_msg_type = TFMessage
                self._tf_pub = self.create_publisher(TFMessage, '/tf', TF_QOS)
            except ImportError:
                self._log.error('tf2_msgs is not installed: no TF output (poses are still '
                                'published); install ros-kilted-tf2-msgs or build '
                                'ros_interfaces/tf2_msgs into this environment')
                self._tf_mode = 'none'
        self._tf_source = 'none'
        self._extrinsic_tf_ok = True  # False after a failed extrinsic lookup: no more waiting
        need_lookup = self._tf_mode == 'map_to_odom' or self._cfg['use_tf_extrinsic']
        if need_lookup:
            try:
                import tf2_ros  # lazy: not available as a wheel
                self._tf_buffer = tf2_ros.Buffer()
                self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self)
                self._tf_source = 'tf2_ros'
            except ImportError:
                # No tf2_ros (ROS 2 from PyPI): the built-in /tf + /tf_static listener
                # (node/tf_buffer.py) answers the same two look-ups.
                try:
                    from posenet_ros.ros.tf_buffer import TfBuffer, TfListener
                    self._tf_buffer = TfBuffer()
                    self._tf_listener = TfListener(self._tf_buffer, self)
                    self._tf_source = 'built-in /tf listener (tf2_ros absent)'
                    self._log.info('tf2_ros is not available: TF look-ups use the built-in '
                                   '/tf + /tf_static listener')
                except ImportError:
                    self._log.error('neither tf2_ros nor tf2_msgs is installed: no TF look-ups '
                                    '(map_to_odom and the TF extrinsic are unavailable)')
                    if self._tf_mode == 'map_to_odom':
                        self._tf_mode = 'none'

    def _subscribe(self) -> None:
        qos = input_qos(self._cfg['input_reliability'])
        compressed = self._cfg['image_transport'] == 'compressed'
        base = self._cfg['image_topic']
        self._input_topic = base.rstrip('/') + '/compressed' if compressed else base
        events = self._event_callbacks()
        self._sub = self.create_subscription(
            CompressedImage if compressed else Image, self._input_topic,
            lambda msg: self._on_image(msg, compressed), qos, event_callbacks=events)
        self._input_topic = self._sub.topic_name
        # camera_info: the intrinsics for verification, and (in every mode) the camera's own
        # rate, the reference of the input-rate diagnostics (frames lost in transport).
        info = self._cfg['camera_info_topic'] or base.rstrip('/').rsplit('/', 1)[0] + \
            '/camera_info'
        sub = self.create_subscription(CameraInfo, info, self._on_camera_info,
                                       input_qos('best_effort'))
        self._info_topic = sub.topic_name

    def _event_callbacks(self):
        from rclpy.event_handler import SubscriptionEventCallbacks

        def incompatible_qos(info):
            self._log.error(
                f'incompatible QoS with a publisher on {self._input_topic}: policy '
                f'{getattr(info, "last_policy_kind", "?")} ({info.total_count} total). This node '
                f'subscribes {self._cfg["input_reliability"]}; set input_reliability:=best_effort '
                'to accept any publisher')

        def incompatible_type(info):
            self._log.error(f'a publisher on {self._input_topic} uses another message type; '
                            'check image_transport (raw: sensor_msgs/Image, compressed: '
                            'sensor_msgs/CompressedImage on <image_topic>/compressed)')

        try:
            return SubscriptionEventCallbacks(incompatible_qos=incompatible_qos,
                                              incompatible_type=incompatible_type)
        except TypeError:  # older rclpy without incompatible_type
            return SubscriptionEventCallbacks(incompatible_qos=incompatible_qos)

    # --- parameters -----------------------------------------------------------------------------
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for p in params:
            if p.name == 'use_sim_time':
                continue
            if p.name in P.SPECS and P.SPECS[p.name].read_only:
                return SetParametersResult(successful=False,
                                           reason=f'{p.name} is read-only: restart the node')
            reason = P.validate(p.name, p.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, params: list[Parameter]) -> None:
        for p in params:
            if p.name in self._cfg:
                self._cfg[p.name] = p.value
                self._log.info(f'parameter {p.name} = {p.value!r}')

    # --- input ----------------------------------------------------------------------------------
    def _on_image(self, msg, compressed: bool) -> None:
        slot = _Slot(msg, time.monotonic(), compressed)
        self._stats.count('received')
        st = msg.header.stamp
        self._stats.image_stamp(st.sec * 1_000_000_000 + st.nanosec)
        with self._cond:
            if self._slot is not None:
                self._stats.count('dropped')  # overwritten before the worker got to it
            self._slot = slot
            self._cond.notify()

    def _on_camera_info(self, msg) -> None:
        k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
        self._stats.count('camera_info')
        st = msg.header.stamp
        self._stats.info_stamp(st.sec * 1_000_000_000 + st.nanosec)
        if not (np.all(np.isfinite(k)) and k[0, 0] > 0 and k[1, 1] > 0 and msg.width > 0):
            self._warn('camera_info', f'ignoring CameraInfo on {self._info_topic} without '
                       "intrinsics (k is zero): uncalibrated camera? the map's are used")
            return
        self._intrinsics = _Intrinsics(k, int(msg.width), int(msg.height))

    # --- worker ---------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while self._running and self._slot is None:
                    self._cond.wait(0.5)
                if not self._running:
                    return
                slot, self._slot = self._slot, None
                pending = [r for r in self._requests if r.t_request <= slot.t_received]
            try:
                self._process(slot, pending)
            except Exception as exc:  # never let one frame kill the worker
                self._reject('internal', f'{type(exc).__name__}: {exc}', pending)

    def _process(self, slot: _Slot, pending: list[_Request]) -> None:
        cfg = self._cfg
        if not pending:
            if not cfg['continuous']:
                self._stats.count('idle')
                return
            if cfg['max_rate'] > 0.0:
                # 5 % slack so that e.g. 10 Hz from a 30 Hz camera is not rounded down to 7.5 Hz.
                if slot.t_received - self._last_output < 0.95 / cfg['max_rate']:
                    self._stats.count('rate_limited')
                    return
        msg = slot.msg
        stamp = msg.header.stamp
        age = None
        if stamp.sec or stamp.nanosec:
            age = (self.get_clock().now() - Time.from_msg(stamp)).nanoseconds * 1e-9
            if cfg['max_image_age'] > 0.0 and age > cfg['max_image_age']:
                self._stats.count('stale')
                why = (f'dropping a frame {age:.3f} s old (max_image_age '
                       f'{cfg["max_image_age"]} s); check clocks / use_sim_time')
                self._warn('stale', why)
                for r in pending:
                    r.last_error = f'stale: {why}'
                return
        else:
            self._warn('unstamped', 'input image has a zero stamp: outputs will be stamped 0 and '
                       'max_image_age cannot be checked')
        try:
            if slot.compressed:
                raw = decode_compressed(msg.format, msg.data)
            else:
                raw = decode_image(msg.encoding, msg.height, msg.width, msg.step,
                                   msg.is_bigendian, msg.data)
            staged = self._stager.stage(raw)
        except ImageConversionError as exc:
            self._reject('conversion', str(exc), pending)
            return
        t0 = time.perf_counter()
        try:
            if self._stager.tensor_path:
                pred = self._relocalizer.predict_tensor(staged)
            else:
                pred = self._relocalizer.predict(staged)
            position = np.asarray(pred.position, dtype=np.float64).reshape(3)
            q_wxyz = np.asarray(pred.quaternion_wxyz, dtype=np.float64).reshape(4)
            if not (np.all(np.isfinite(position)) and np.all(np.isfinite(q_wxyz))
                    and abs(np.linalg.norm(q_wxyz) - 1.0) < 1e-3):
                raise NonFiniteOutputError(f'model output is not finite / not a unit quaternion: '
                                           f'{position.tolist()} {q_wxyz.tolist()}')
        except NonFiniteOutputError as exc:
            self._reject('non_finite_output', str(exc), pending)
            return
        except InvalidFrameError as exc:  # e.g. outside a .pt2 model's size range
            self._reject('invalid_frame', str(exc), pending)
            return
        infer_ms = (time.perf_counter() - t0) * 1000.0
        self._stats.processed(infer_ms, age, float(pred.raw_quat_norm))

        frame_id = cfg['camera_frame'] or msg.header.frame_id or self._camera_frame_default
        if cfg['continuous'] or not pending:
            t_map_base = self._publish_pose(stamp, position, q_wxyz, frame_id)
            self._publish_tf(stamp, position, q_wxyz, frame_id, t_map_base)
            self._last_output = slot.t_received
        if cfg['refine'] == 'off':
            if pending:
                self._serve_requests(pending, stamp, position, q_wxyz, frame_id,
                                     float(pred.raw_quat_norm))
        elif pending or cfg['refine'] == 'continuous':
            # Verification needs the host RGB frame (the CPU path already staged it).
            rgb = to_rgb(raw) if self._stager.tensor_path else staged
            self._hand_over(_RefineJob(rgb, position, q_wxyz, stamp, frame_id,
                                       float(pred.raw_quat_norm), pending))

    # --- verification thread -------------------------------------------------------------------
    def _hand_over(self, job: _RefineJob) -> None:
        """Give the verification thread the newest frame; an unstarted one is dropped."""
        with self._rcond:
            if self._rjob is not None:
                self._stats.count('verify_dropped')
                # Requests of the dropped frame stay pending (they are in self._requests and the
                # new job was built from the same list), so nothing is lost.
            self._rjob = job
            self._rcond.notify()

    def _refine_work(self) -> None:
        while True:
            with self._rcond:
                while self._running and self._rjob is None:
                    self._rcond.wait(0.5)
                if not self._running:
                    return
                job, self._rjob = self._rjob, None
            try:
                self._verify(job)
            except Exception as exc:  # never let one frame kill the thread
                self._stats.reject('verify_internal', f'{type(exc).__name__}: {exc}')
                self._warn('verify_internal', f'verification failed: {type(exc).__name__}: '
                           f'{exc}')
                for r in job.pending:
                    r.last_error = f'verification failed: {exc}'

    def _frame_intrinsics(self, width: int, height: int) -> tuple[np.ndarray, str]:
        """K for a ``width x height`` frame: the camera_info's, else the map's (scaled)."""
        info = self._intrinsics
        if info is not None:
            if (info.width, info.height) == (width, height):
                return info.K, 'camera_info'
            self._warn('camera_info_size', f'CameraInfo on {self._info_topic} is for '
                       f'{info.width}x{info.height} frames but the images are {width}x{height}; '
                       "using the map's intrinsics (publish the matching camera_info)")
        return self._relocalizer.localizer.default_intrinsics(width, height), 'map'

    def _verify(self, job: _RefineJob) -> None:
        t0 = time.perf_counter()
        h, w = job.rgb.shape[:2]
        try:
            K, source = self._frame_intrinsics(w, h)
        except MissingIntrinsicsError as exc:
            self._stats.verified('unverified', str(exc), 0, 0.0)
            self._warn('intrinsics', str(exc))
            for r in job.pending:
                r.last_error = f'not verified: {exc}'
            return
        self._intrinsics_source = source
        ver = self._relocalizer.verify(job.rgb, K, job.position, job.q_wxyz)
        ms = (time.perf_counter() - t0) * 1000.0
        self._stats.verified(ver.status, ver.reason, ver.n_inliers, ms)
        if not ver.verified:
            for r in job.pending:
                r.last_error = f'not verified ({ver.status}: {ver.reason})'
            return
        cov = np.asarray(ver.covariance, dtype=np.float64)
        if self._verified_pub is not None:
            msg = PoseWithCovarianceStamped()
            msg.header.stamp = job.stamp
            msg.header.frame_id = self._map_frame()
            self._fill_pose(msg.pose.pose, ver.position, ver.quaternion_wxyz)
            msg.pose.covariance = cov.reshape(-1).tolist()
            self._verified_pub.publish(msg)
            self._stats.count('verified_published')
        if job.pending:
            details = {'status': ver.status, 'reason': ver.reason, 'n_inliers': ver.n_inliers,
                       'inlier_ratio': ver.inlier_ratio, 'reproj_rms_px': ver.reproj_rms_px,
                       'ms': {k: round(v, 2) for k, v in ver.ms.items()},
                       'intrinsics': source,
                       'coarse_position': [float(v) for v in job.position],
                       'coarse_orientation_xyzw':
                           [float(v) for v in geometry.wxyz_to_xyzw(job.q_wxyz)]}
            self._serve_requests(job.pending, job.stamp, ver.position, ver.quaternion_wxyz,
                                 job.camera_frame, job.raw_norm, covariance=cov,
                                 verification=details)

    def _reject(self, reason: str, message: str, pending: list[_Request]) -> None:
        self._stats.reject(reason, message)
        self._warn(reason, f'rejected frame ({reason}): {message}')
        for r in pending:
            r.last_error = f'{reason}: {message}'

    def _warn(self, key: str, text: str) -> None:
        """Log ``text`` at most once per ``log_throttle`` seconds per ``key``."""
        now = time.monotonic()
        last, suppressed = self._throttle.get(key, (-math.inf, 0))
        if now - last >= self._cfg['log_throttle']:
            extra = f' ({suppressed} similar suppressed)' if suppressed else ''
            self._log.warning(text + extra)
            self._throttle[key] = (now, 0)
        else:
            self._throttle[key] = (last, suppressed + 1)

    # --- outputs --------------------------------------------------------------------------------
    def _map_frame(self) -> str:
        return self._cfg['map_frame'] or self._map_frame_default

    def _covariance_matrix(self) -> np.ndarray:
        ps, os_ = self._cfg['position_stddev'], self._cfg['orientation_stddev']
        cov = np.zeros((6, 6))
        cov[np.diag_indices(6)] = [ps * ps] * 3 + [os_ * os_] * 3
        return cov

    def _covariance(self) -> list[float]:
        return self._covariance_matrix().reshape(-1).tolist()

    @staticmethod
    def _fill_pose(pose, position, q_wxyz) -> None:
        x, y, z = (float(v) for v in position)
        qx, qy, qz, qw = (float(v) for v in geometry.wxyz_to_xyzw(q_wxyz))  # ROS order
        pose.position.x, pose.position.y, pose.position.z = x, y, z
        pose.orientation.x, pose.orientation.y = qx, qy
        pose.orientation.z, pose.orientation.w = qz, qw

    def _publish_pose(self, stamp: TimeMsg, position, q_wxyz, camera_frame: str):
        """Camera pose (+ covariance), then the base pose; returns ``T_map_base`` or None."""
        map_frame = self._map_frame()
        msg = PoseStamped()
        msg.header.stamp = stamp
        msg.header.frame_id = map_frame
        self._fill_pose(msg.pose, position, q_wxyz)
        self._pose_pub.publish(msg)  # the primary output first; the rest adds no latency to it
        cov = PoseWithCovarianceStamped()
        cov.header = msg.header
        cov.pose.pose = msg.pose
        cov.pose.covariance = self._covariance()
        self._cov_pub.publish(cov)
        self._stats.count('published')
        t_cam_base, _ = self._base_extrinsic(camera_frame, stamp)
        if t_cam_base is None:
            return None
        t_map_cam = geometry.pose_to_matrix(position, q_wxyz)
        t_map_base = geometry.compose(t_map_cam, t_cam_base)
        base = PoseWithCovarianceStamped()
        base.header = msg.header
        self._fill_pose(base.pose.pose, *geometry.matrix_to_pose(t_map_base))
        base.pose.covariance = covariance_through_mount(
            self._covariance_matrix(), t_map_cam, t_cam_base).reshape(-1).tolist()
        self._base_pub.publish(base)
        self._stats.count('base_published')
        return t_map_base

    def _publish_tf(self, stamp: TimeMsg, position, q_wxyz, camera_frame: str,
                    t_map_base: np.ndarray | None) -> None:
        if self._tf_mode == 'none':
            return
        if self._tf_mode == 'camera':
            child = camera_frame + self._cfg['tf_child_suffix']
            self._send_tf(stamp, self._map_frame(), child, position, q_wxyz)
            return
        # map_to_odom: T_map_odom = T_map_base * T_odom_base^-1 at the image stamp,
        # future-dated. A base pose refused for want of an extrinsic refuses this too.
        if t_map_base is None:
            return
        t_odom_base = self._lookup(self._cfg['odom_frame'], self._cfg['base_frame'], stamp)
        if t_odom_base is None:
            return
        t_map_odom = map_to_odom(t_map_base, t_odom_base)
        odom_pos, odom_q = geometry.matrix_to_pose(t_map_odom)
        future = Time.from_msg(stamp) + Duration(seconds=self._cfg['transform_tolerance'])
        self._send_tf(future.to_msg(), self._map_frame(), self._cfg['odom_frame'], odom_pos,
                      odom_q)

    def _send_tf(self, stamp: TimeMsg, parent: str, child: str, pos, q_wxyz) -> None:
        tf = TransformStamped()
        tf.header.stamp = stamp
        tf.header.frame_id = parent
        tf.child_frame_id = child
        tf.transform.translation.x, tf.transform.translation.y = float(pos[0]), float(pos[1])
        tf.transform.translation.z = float(pos[2])
        qx, qy, qz, qw = (float(v) for v in geometry.wxyz_to_xyzw(q_wxyz))
        r = tf.transform.rotation
        r.x, r.y, r.z, r.w = qx, qy, qz, qw
        self._tf_pub.publish(self._tf_msg_type(transforms=[tf]))

    def _lookup_tf(self, target: str, source: str, stamp: TimeMsg,
                   timeout: float) -> tuple[np.ndarray | None, str]:
        """``(T_target_source, '')`` at ``stamp``, or ``(None, why)``."""
        if self._tf_buffer is None:
            return None, 'no TF listener'
        try:
            tf = self._tf_buffer.lookup_transform(target, source, Time.from_msg(stamp),
                                                  timeout=Duration(seconds=timeout))
        except Exception as exc:  # tf2 LookupException / ExtrapolationException / ...
            return None, f'{type(exc).__name__}: {exc}'
        t, r = tf.transform.translation, tf.transform.rotation
        return xyzw_pose_to_matrix([t.x, t.y, t.z, r.x, r.y, r.z, r.w]), ''

    def _lookup(self, target: str, source: str, stamp: TimeMsg) -> np.ndarray | None:
        """``T_target_source`` at ``stamp`` from TF (None, counted and logged, if unavailable)."""
        mat, why = self._lookup_tf(target, source, stamp, self._cfg['tf_timeout'])
        if mat is None:
            self._stats.count('tf_lookup_failed')
            self._warn('tf_lookup', f'TF lookup {target} -> {source} failed: {why}')
        return mat

    def _extrinsic(self, camera_frame: str, stamp: TimeMsg):
        """``(T_cam_base, source, note)``: from TF, else camera_in_base, else ``(None, '', why)``.

        Never a guess: a camera is not mounted at the identity (its optical frame looks along
        z, the base along x), so without TF and without the parameter nothing is assumed.
        """
        cfg = self._cfg
        base = cfg['base_frame']
        tf_why = 'use_tf_extrinsic is false'
        if cfg['use_tf_extrinsic']:
            if self._tf_buffer is None:
                tf_why = 'no TF listener (neither tf2_ros nor tf2_msgs is installed)'
            else:
                # After a failure, do not wait tf_timeout on every frame for a mount that
                # is not in TF (that would cap the output rate); the next success re-arms it.
                timeout = cfg['tf_timeout'] if self._extrinsic_tf_ok else 0.0
                mat, why = self._lookup_tf(camera_frame, base, stamp, timeout)
                if mat is not None:
                    self._extrinsic_tf_ok = True
                    return mat, 'tf', ''
                self._extrinsic_tf_ok = False
                tf_why = f'TF has no {base} -> {camera_frame} ({why})'
        if cfg['camera_in_base']:
            t_base_cam = xyzw_pose_to_matrix(cfg['camera_in_base'])
            return geometry.invert(t_base_cam), 'parameter camera_in_base', tf_why
        return None, '', (f'no extrinsic: {tf_why}, and camera_in_base is unset; publish '
                          f'{base} -> {camera_frame} on TF (URDF / static_transform_publisher) '
                          'or set camera_in_base [x, y, z, qx, qy, qz, qw] (docs/node.md, '
                          '"Camera extrinsic")')

    def _base_extrinsic(self, camera_frame: str, stamp: TimeMsg):
        """:meth:`_extrinsic`, accounted: ``(T_cam_base, source)`` or ``(None, reason)``."""
        mat, source, note = self._extrinsic(camera_frame, stamp)
        if mat is None:
            self._stats.base_outputs(f'refused: {note}', refused=True)
            self._warn('base_refused', f'base-frame outputs refused ({note}); camera-frame '
                       'outputs continue')
            return None, note
        if source != 'tf' and self._cfg['use_tf_extrinsic']:
            self._warn('tf_extrinsic', f'{note}: using camera_in_base')
        self._stats.base_outputs(f'ok (extrinsic: {source})')
        return mat, source

    def _serve_requests(self, pending, stamp, cam_pos, cam_q, camera_frame, raw_norm,
                        covariance=None, verification=None) -> None:
        """Answer ``pending`` ~/relocalize calls and send one initial pose for them.

        ``covariance``: the camera pose's 6x6 (verified poses), carried to the base frame
        through the mount; None: the parameters' fixed covariance (refine off).
        """
        cfg = self._cfg
        with self._cond:
            pending = [r for r in pending if not r.future.done()]
        if not pending:  # already answered from an earlier frame
            return
        t_map_cam = geometry.pose_to_matrix(cam_pos, cam_q)
        result = {
            'frame_id': self._map_frame(),
            'stamp': {'sec': int(stamp.sec), 'nanosec': int(stamp.nanosec)},
            'camera_frame': camera_frame,
            'camera': {'position': [float(v) for v in cam_pos],
                       'orientation_xyzw': [float(v) for v in geometry.wxyz_to_xyzw(cam_q)]},
            'base_frame': cfg['base_frame'],
            'raw_quat_norm': raw_norm,
            'model_id': self._model_id,
            'verified': verification is not None,
        }
        t_cam_base, source = self._base_extrinsic(camera_frame, stamp)
        if t_cam_base is None:
            result['base'] = None
            result['refused'] = source  # the reason; no initial pose is sent
        else:
            t_map_base = geometry.compose(t_map_cam, t_cam_base)
            base_pos, base_q = geometry.matrix_to_pose(t_map_base)
            msg = PoseWithCovarianceStamped()
            msg.header.stamp = stamp
            msg.header.frame_id = self._map_frame()
            self._fill_pose(msg.pose.pose, base_pos, base_q)
            cov = self._covariance_matrix() if covariance is None else covariance
            msg.pose.covariance = covariance_through_mount(
                cov, t_map_cam, t_cam_base).reshape(-1).tolist()
            self._init_pub.publish(msg)  # once per request batch: AMCL re-initialises on each
            result['base'] = {'position': [float(v) for v in base_pos],
                              'orientation_xyzw': [float(v) for v in
                                                   geometry.wxyz_to_xyzw(base_q)]}
            result['extrinsic_source'] = source
        if verification is not None:
            result['verification'] = verification
        with self._cond:
            for r in pending:
                if r in self._requests:
                    self._requests.remove(r)
                if not r.future.done():
                    r.future.set_result(result)
        self._wake.trigger()  # resume the awaiting service coroutines now

    # --- services -------------------------------------------------------------------------------
    async def _on_relocalize(self, request, response):
        # A coroutine: the executor thread stays free for images and other callbacks while this
        # call waits for the worker (or the timeout timer) to complete the request's future.
        req = _Request(time.monotonic())
        timeout = self._cfg['relocalize_timeout']

        def expire():
            with self._cond:
                if req in self._requests:
                    self._requests.remove(req)
                if not req.future.done():
                    req.future.set_result(None)

        with self._cond:
            self._requests.append(req)
        timer = self.create_timer(timeout, expire, callback_group=self._srv_group)
        try:
            result = await req.future
        finally:
            with contextlib.suppress(InvalidHandle):  # the node is being destroyed (shutdown)
                self.destroy_timer(timer)
        if result is not None and result.get('refused'):
            response.success = False
            response.message = (f'base-frame outputs refused, nothing sent on '
                                 f'{self._cfg["initial_pose_topic"]}: {result["refused"]}. '
                                 f'The camera pose was: {json.dumps(result)}')
            return response
        if result is not None:
            response.success = True
            response.message = json.dumps(result)
            self._log.info(f'relocalized: base in {result["frame_id"]} at '
                           f'{np.round(result["base"]["position"], 3).tolist()}')
            return response
        response.success = False
        why = f'; last frame: {req.last_error}' if req.last_error else ''
        what = 'verified pose' if self._cfg['refine'] != 'off' else 'valid frame'
        response.message = (f'no {what} from {self._input_topic} within {timeout:.2f} s '
                             f'(relocalize_timeout){why}')
        return response

    def _on_enable(self, request, response):
        result = self.set_parameters([Parameter('continuous', Parameter.Type.BOOL,
                                                bool(request.data))])[0]
        response.success = bool(result.successful)
        response.message = (f'continuous output {"enabled" if request.data else "disabled"}'
                            if result.successful else result.reason)
        return response

    # --- diagnostics ----------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        snap = self._stats.snapshot(self._cfg['continuous'], self._input_topic)
        status = DiagnosticStatus()
        status.level = bytes([snap['level']])
        status.name = f'{self.get_fully_qualified_name()}: relocalization'
        status.message = snap['message']
        status.hardware_id = self._model_id
        values = dict(snap['values'])
        values['model_id'] = self._model_id
        values['device'] = str(self._device)
        values['precision'] = self._precision
        values['tf_mode'] = self._tf_mode
        values['refine'] = self._cfg['refine']
        values['tf_source'] = self._tf_source
        values['camera_info_topic'] = self._info_topic
        values['camera_info_received'] = str(self._stats.totals['camera_info'])
        if self._cfg['refine'] != 'off':
            values['map_path'] = str(self._map_path)
            values['intrinsics_source'] = self._intrinsics_source
            values['verify_dropped'] = str(self._stats.totals['verify_dropped'])
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [status]
        self._diag_pub.publish(arr)

    def destroy_node(self) -> None:
        """Stop the worker, then destroy the node."""
        cond = getattr(self, '_cond', None)  # absent when __init__ failed (context clean-up)
        if cond is not None:
            with cond:
                self._running = False
                cond.notify_all()
            self._worker.join(timeout=2.0)
            if self._refiner is not None:
                with self._rcond:
                    self._rcond.notify_all()
                self._refiner.join(timeout=2.0)
        super().destroy_node()


def _spin(executor, stop: threading.Event) -> None:
    try:
        executor.spin()
    except ExternalShutdownException:
        pass
    finally:
        stop.set()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: run the node until SIGINT/SIGTERM; exit 1 on start-up errors."""
    args = sys.argv if argv is None else argv
    # The worker thread takes frames over from the executor thread, which goes on running
    # Python (rclpy rebuilds its wait set) after the callback: a woken worker waits up to the GIL
    # switch interval for the interpreter. CPython's default is 5 ms; 0.1 ms cut the measured
    # hand-over from 0.7 ms (at 0.5 ms) to 0.35 ms. Torch releases the GIL while it computes, so
    # the shorter interval costs nothing there.
    sys.setswitchinterval(0.0001)
    # Own signal handling: rclpy's handler chains into Python's, so a KeyboardInterrupt could
    # land anywhere in the clean-up (seen as exit status -2 under load). Until the node is up,
    # Ctrl-C interrupts loading as usual.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = RelocalizerNode()
    except PoseNetError as exc:
        rclpy.logging.get_logger(NODE_NAME).fatal(f'cannot start: {exc}')
        rclpy.try_shutdown()
        return 1
    except KeyboardInterrupt:
        rclpy.try_shutdown()
        return 130
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=_spin, args=(executor, stop), name='executor', daemon=True)
    spinner.start()
    while not stop.wait(0.25):  # the main thread stays free to run the signal handlers
        pass
    node.get_logger().info('shutting down')
    executor.shutdown(timeout_sec=2.0)
    spinner.join(timeout=2.0)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
