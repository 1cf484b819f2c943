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
* with ``recovery`` on (``node_supervise``): the supervision of the localizer that publishes
  ``map -> odom``, its state on ``~/supervision`` and ``/initialpose`` when it is lost.

The frame path is :class:`posenet_ros.localizer.Localizer` (one network pass per frame gives the
coarse pose and the retrieval feature); this module and its ``node_*`` siblings are adapters:
input here, publishers in ``node_outputs``, ``~/relocalize`` in ``node_requests``, TF and the
camera mount in ``node_tf``, and the verification worker in ``node_verify``. Verification
(``posenet_ros.verify``, docs/verification.md) runs on that thread of its own, fed
newest-frame-wins by the worker, so the coarse output keeps PoseNet's rate in every mode.

Threads and who owns what (each piece of state has one owner thread, or a lock):

* executor thread (every callback): writes ``_cfg`` (parameter callbacks; one key assignment,
  every thread reads it per use) and ``VerificationWorker.camera_info`` (a reference swap);
* worker thread ``posenet_worker``: the model runtime (``Localizer.localize``), the frame
  stager, ``_last_output`` and the TF mount look-up state (``NodeTf``);
* verification thread ``posenet_verify``: the map side of the Localizer and
  ``intrinsics_source``;
* locked: the newest-frame slot (``NewestSlot``), the pending ``~/relocalize`` calls
  (``RequestBook``), the verification job slot (a ``NewestSlot``), ``NodeStats`` and the
  throttled warnings (``ThrottledLog``), each with its own lock.

Run it with ``relocalize_node --ros-args --params-file config/relocalize.yaml -p model_path:=...``
(or ``python -m posenet_ros.ros.relocalize_node ...`` before the console script is installed).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import SetBool, Trigger

from posenet_ros.core.errors import (
    ImageConversionError,
    InvalidFrameError,
    MapError,
    MapNotFoundError,
    NonFiniteOutputError,
    PoseNetError,
)
from posenet_ros.core.image_conversion import decode_compressed, decode_image, to_rgb
from posenet_ros.core.ros_conversions import camera_info_topic, stamp_to_ns
from posenet_ros.ros import params as P
from posenet_ros.ros.diagnostics import NodeStats, ThrottledLog
from posenet_ros.ros.frames import FrameStager
from posenet_ros.ros.node_outputs import OUTPUT_QOS, NodeOutputs
from posenet_ros.ros.node_requests import RequestBook, answer_payload, response_text
from posenet_ros.ros.node_supervise import NodeSupervision, check_config
from posenet_ros.ros.node_tf import Mount, NodeTf
from posenet_ros.ros.node_types import NewestSlot, NodeFrame
from posenet_ros.ros.node_verify import CameraInfo as _CameraInfo
from posenet_ros.ros.node_verify import VerificationWorker

__all__ = ['NODE_NAME', 'RelocalizerNode', 'main', 'input_qos']

NODE_NAME = 'posenet_relocalizer'


def input_qos(reliability: str) -> QoSProfile:
    """Sensor-data QoS with depth 1; ``reliability`` 'best_effort' (default) or 'reliable'."""
    rel = (ReliabilityPolicy.RELIABLE if reliability == 'reliable'
           else ReliabilityPolicy.BEST_EFFORT)
    return QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=rel,
                      durability=DurabilityPolicy.VOLATILE)


@dataclass
class _Slot:
    msg: object
    t_received: float  # time.monotonic() at receipt
    compressed: bool


class RelocalizerNode(Node):
    """PoseNet relocalization node; see the module docstring and docs/node.md.

    Built in two steps, which the managed variant (``node_lifecycle``) runs as lifecycle
    transitions: :meth:`_configure` (parameters, model, map) and :meth:`_activate` (TF,
    publishers, services, threads, subscriptions).
    """

    _managed = False  # the lifecycle variant configures and activates on request

    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self._log = self.get_logger()
        if not self._managed:
            self._configure()
            self._activate()

    def _configure(self) -> None:
        """Parameters, model and map (raises a PoseNetError with the fix when one is wrong)."""
        self._cfg = P.declare(self)
        check_config(self._cfg)  # before the slow loading
        self._stats = NodeStats()
        self._warn = ThrottledLog(self._log.warning, lambda: self._cfg['log_throttle']).warn
        self._load_model()
        self._load_map()
        if not getattr(self, '_param_callbacks', False):
            self.add_on_set_parameters_callback(self._on_set_parameters)
            self.add_post_set_parameters_callback(self._after_set_parameters)
            self._param_callbacks = True

    def _activate(self) -> None:
        """TF, outputs, services, the worker threads and, last, the input subscriptions."""
        frames = self._localizer.metadata.get('frames') or {}
        self._camera_frame_default = str(frames.get('camera_frame') or 'camera_optical')
        cfg = self._cfg
        self._tf = NodeTf(self, cfg['tf_mode'] == 'map_to_odom' or cfg['use_tf_extrinsic']
                          or cfg['recovery'] != 'off', self._log)
        self._outputs = NodeOutputs(self, cfg, str(frames.get('map_frame') or 'map'),
                                    self._stats, self._tf, self._warn)
        if self._tf.buffer is None and self._outputs.tf_mode == 'map_to_odom':
            self._outputs.tf_mode = 'none'  # no odom -> base without a TF listener
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', OUTPUT_QOS)
        self._requests = RequestBook()
        self._setup_services()
        self._supervision = (None if cfg['recovery'] == 'off' else
                             NodeSupervision(self, cfg, self._tf, self._outputs, self._warn))

        self._frames = NewestSlot()  # executor thread -> worker, newest frame wins
        self._last_output = -math.inf  # worker thread only
        self._worker = threading.Thread(target=self._work, name='posenet_worker', daemon=True)
        self._worker.start()
        self._verifier = None
        if cfg['refine'] != 'off':
            self._verifier = VerificationWorker(self._localizer, self._outputs, self._serve,
                                                self._stats, self._warn, '')
            if self._supervision is not None:
                self._verifier.supervise = self._supervision.on_verified
        self._subscribe()  # last: the model is loaded and warm before the first frame arrives
        if self._verifier is not None:
            self._verifier.info_topic = self._info_topic
        self._log.info(
            f'ready: model {self._model_id} on {self._localizer.device}, input '
            f'{self._input_topic} ({cfg["image_transport"]}, {cfg["input_reliability"]}), '
            f'tf_mode {self._outputs.tf_mode}, map frame {self._outputs.map_frame()}, refine '
            f'{cfg["refine"]}' + (f' (camera_info {self._info_topic})'
                                  if cfg['refine'] != 'off' else '')
            + (f', recovery {cfg["recovery"]}' if cfg['recovery'] != 'off' else ''))

    # --- set-up ---------------------------------------------------------------------------------
    def _load_model(self) -> None:
        import torch

        from posenet_ros.localizer import Localizer

        if self._cfg['num_threads'] > 0:
            torch.set_num_threads(self._cfg['num_threads'])
        t0 = time.monotonic()
        # The Relocalizer under the Localizer resolves the device ('auto' keeps int8 exports on
        # the CPU).
        self._localizer = Localizer(self._cfg['model_path'], device=self._cfg['device'],
                                    warmup=self._cfg['warmup_iterations'])
        reloc = self._localizer.relocalizer
        self._model_id = reloc.model_id
        self._precision = 'int8' if reloc.quantization else 'fp32'
        self._stager = FrameStager(torch.device(reloc.device))
        self._log.info(f'loaded {self._cfg["model_path"]} (model {self._model_id}, backbone '
                       f'{reloc.backbone}, {self._precision}) on {reloc.device} in '
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
            with warnings.catch_warnings(record=True) as caught:  # start-up: one thread
                warnings.simplefilter('always')
                self._localizer.attach_map(path)
            for w in caught:  # e.g. an export without the retrieval feature
                self._log.warning(str(w.message))
        except MapError as exc:
            raise type(exc)(f'{exc} (refine {self._cfg["refine"]}; or set refine:=off to run '
                            'on coarse poses only)') from exc
        self._map_path = path
        m = self._localizer.scene_map
        self._log.info(f'loaded scene map {path} ({m.n_frames} frames, {len(m.points)} points, '
                       f'{m.feature}) in {time.monotonic() - t0:.2f} s')

    def _setup_services(self) -> None:
        # One executor thread runs every callback; ~/relocalize awaits the worker (a
        # coroutine), and the worker wakes the executor through this guard condition when it
        # completes a request. A suspended coroutine keeps its callback group busy, so the
        # service and its timeout timers get a reentrant group of their own: in the node's
        # default (mutually exclusive) group they would block the image subscription.
        self._wake = self.create_guard_condition(lambda: None)
        self._srv_group = ReentrantCallbackGroup()
        self.create_service(Trigger, '~/relocalize', self._on_relocalize,
                            callback_group=self._srv_group)
        self.create_service(SetBool, '~/enable', self._on_enable)
        self.create_timer(self._cfg['diagnostics_period'], self._publish_diagnostics)

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
        info = self._cfg['camera_info_topic'] or camera_info_topic(base)
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

    # --- input (executor thread) ----------------------------------------------------------------
    def _on_image(self, msg, compressed: bool) -> None:
        slot = _Slot(msg, time.monotonic(), compressed)
        self._stats.count('received')
        self._stats.image_stamp(stamp_to_ns(msg.header.stamp))
        if self._frames.put(slot):
            self._stats.count('dropped')  # overwritten before the worker got to it

    def _on_camera_info(self, msg) -> None:
        k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
        self._stats.count('camera_info')
        self._stats.info_stamp(stamp_to_ns(msg.header.stamp))
        if not (np.all(np.isfinite(k)) and k[0, 0] > 0 and k[1, 1] > 0 and msg.width > 0):
            self._warn('camera_info', f'ignoring CameraInfo on {self._info_topic} without '
                       "intrinsics (k is zero): uncalibrated camera? the map's are used")
            return
        if self._verifier is not None:
            self._verifier.camera_info = _CameraInfo(k, int(msg.width), int(msg.height))

    # --- worker thread --------------------------------------------------------------------------
    def _work(self) -> None:
        while (slot := self._frames.take()) is not None:
            pending = self._requests.since(slot.t_received)
            try:
                self._process(slot, pending)
            except Exception as exc:  # never let one frame kill the worker
                self._reject('internal', f'{type(exc).__name__}: {exc}', pending)

    def _admit(self, slot: _Slot, pending: list, due: bool) -> tuple[bool, float | None]:
        """``(process it?, frame age in s or None)``: the rate limit and the stale check.

        ``due``: supervision wants this frame verified (its budget allows one).
        """
        cfg = self._cfg
        if not pending and not due:
            if not cfg['continuous']:
                self._stats.count('idle')
                return False, None
            # 5 % slack so that e.g. 10 Hz from a 30 Hz camera is not rounded down to 7.5 Hz.
            if cfg['max_rate'] > 0.0 and \
                    slot.t_received - self._last_output < 0.95 / cfg['max_rate']:
                self._stats.count('rate_limited')
                return False, None
        stamp = slot.msg.header.stamp
        stamp_ns = stamp_to_ns(stamp)
        if not stamp_ns:
            self._warn('unstamped', 'input image has a zero stamp: outputs will be stamped 0 and '
                       'max_image_age cannot be checked')
            return True, None
        age = (self.get_clock().now().nanoseconds - stamp_ns) * 1e-9
        if cfg['max_image_age'] > 0.0 and age > cfg['max_image_age']:
            self._stats.count('stale')
            why = (f'dropping a frame {age:.3f} s old (max_image_age '
                   f'{cfg["max_image_age"]} s); check clocks / use_sim_time')
            self._warn('stale', why)
            for r in pending:
                r.last_error = f'stale: {why}'
            return False, age
        return True, age

    def _decode(self, slot: _Slot, pending: list):
        """``(raw frame, staged frame)`` of the message, or None (rejected)."""
        msg = slot.msg
        try:
            if slot.compressed:
                raw = decode_compressed(msg.format, msg.data)
            else:
                raw = decode_image(msg.encoding, msg.height, msg.width, msg.step,
                                   msg.is_bigendian, msg.data)
            return raw, self._stager.stage(raw)
        except ImageConversionError as exc:
            self._reject('conversion', str(exc), pending)
            return None

    def _process(self, slot: _Slot, pending: list) -> None:
        cfg = self._cfg
        due = self._supervision is not None and self._supervision.due(slot.t_received)
        admitted, age = self._admit(slot, pending, due)
        decoded = self._decode(slot, pending) if admitted else None
        if decoded is None:
            return
        raw, staged = decoded
        header = slot.msg.header
        t0 = time.perf_counter()
        try:
            result = self._localizer.localize(staged, header.stamp, covariance=self._coarse_cov())
        except NonFiniteOutputError as exc:
            self._reject('non_finite_output', str(exc), pending)
            return
        except InvalidFrameError as exc:  # e.g. outside a .pt2 model's size range
            self._reject('invalid_frame', str(exc), pending)
            return
        self._stats.processed((time.perf_counter() - t0) * 1000.0, age,
                              float(result.raw_quat_norm))
        camera_frame = cfg['camera_frame'] or header.frame_id or self._camera_frame_default
        publish = cfg['continuous']
        if publish:  # the camera pose first: the mount look-up adds no latency to it
            self._outputs.publish_camera(result)
        mount = self._mount(camera_frame, header.stamp)  # the frame's one look-up of the mount
        frame = NodeFrame(result.with_mount(mount.camera_in_base), camera_frame, mount, pending)
        if publish:
            self._outputs.publish_base_and_tf(frame)
            self._last_output = slot.t_received
        if cfg['refine'] == 'off':
            if pending:
                self._serve(frame)
        elif pending or due or cfg['refine'] == 'continuous':
            # Verification needs the host RGB frame (the CPU path already staged it).
            frame.rgb = to_rgb(raw) if self._stager.tensor_path else staged
            self._verifier.hand_over(frame)

    def _coarse_cov(self) -> np.ndarray:
        from posenet_ros.localizer import diagonal_covariance

        return diagonal_covariance(self._cfg['position_stddev'], self._cfg['orientation_stddev'])

    def _mount(self, camera_frame: str, stamp) -> Mount:
        """The frame's camera mount (TF, else ``camera_in_base``), accounted in diagnostics."""
        mount = self._tf.mount(self._cfg, camera_frame, stamp)
        if mount.camera_in_base is None:
            self._stats.base_outputs(f'refused: {mount.note}', refused=True)
            self._warn('base_refused', f'base-frame outputs refused ({mount.note}); '
                       'camera-frame outputs continue')
            return mount
        if mount.source != 'tf' and self._cfg['use_tf_extrinsic']:
            self._warn('tf_extrinsic', f'{mount.note}: using camera_in_base')
        self._stats.base_outputs(f'ok (extrinsic: {mount.source})')
        return mount

    def _reject(self, reason: str, message: str, pending: list) -> None:
        self._stats.reject(reason, message)
        self._warn(reason, f'rejected frame ({reason}): {message}')
        for r in pending:
            r.last_error = f'{reason}: {message}'

    # --- ~/relocalize (answered from the worker or the verification thread) --------------------
    def _serve(self, frame: NodeFrame) -> None:
        """Answer the frame's open ~/relocalize calls and send one initial pose for them."""
        pending = self._requests.open(frame.pending)
        if not pending:  # already answered from an earlier frame
            return
        payload = answer_payload(frame, self._outputs.map_frame(), self._cfg['base_frame'],
                                 self._model_id)
        if frame.result.best_base is not None:
            self._outputs.publish_initial_pose(frame)  # once per batch: AMCL re-initialises
        self._requests.complete(pending, payload)
        self._wake.trigger()  # resume the awaiting service coroutines now

    async def _on_relocalize(self, request, response):
        # A coroutine: the executor thread stays free for images and other callbacks while this
        # call waits for the worker (or the timeout timer) to complete the request's future.
        req = self._requests.add()
        timeout = self._cfg['relocalize_timeout']
        timer = self.create_timer(timeout, lambda: self._requests.complete([req], None),
                                  callback_group=self._srv_group)
        try:
            payload = await req.future
        finally:
            with contextlib.suppress(InvalidHandle):  # the node is being destroyed (shutdown)
                self.destroy_timer(timer)
        if payload is not None:
            response.success, response.message = response_text(
                payload, self._cfg['initial_pose_topic'])
            if response.success:
                self._log.info(f'relocalized: base in {payload["frame_id"]} at '
                               f'{np.round(payload["base"]["position"], 3).tolist()}')
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

    # --- diagnostics (executor thread) ----------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        snap = self._stats.snapshot(self._cfg['continuous'], self._input_topic)
        status = DiagnosticStatus()
        status.level = bytes([snap['level']])
        status.name = f'{self.get_fully_qualified_name()}: relocalization'
        status.message = snap['message']
        status.hardware_id = self._model_id
        values = dict(snap['values'])
        values['model_id'] = self._model_id
        values['device'] = str(self._localizer.device)
        values['precision'] = self._precision
        values['tf_mode'] = self._outputs.tf_mode
        values['refine'] = self._cfg['refine']
        values['tf_source'] = self._tf.source
        values['camera_info_topic'] = self._info_topic
        values['camera_info_received'] = str(self._stats.totals['camera_info'])
        if self._verifier is not None:
            values['map_path'] = str(self._map_path)
            values['intrinsics_source'] = self._verifier.intrinsics_source
            values['verify_dropped'] = str(self._stats.totals['verify_dropped'])
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [status]
        if self._supervision is not None:
            arr.status.append(self._supervision.diagnostic(self.get_fully_qualified_name(),
                                                           self._model_id))
        self._diag_pub.publish(arr)

    def destroy_node(self) -> None:
        """Stop the worker and the verification thread, then destroy the node."""
        if hasattr(self, '_worker'):  # absent when __init__ failed (context clean-up)
            self._frames.stop()
            self._worker.join(timeout=2.0)
            if getattr(self, '_verifier', None) is not None:
                self._verifier.stop()
        super().destroy_node()


def _spin(executor, stop: threading.Event) -> None:
    try:
        executor.spin()
    except ExternalShutdownException:
        pass
    finally:
        stop.set()


def main(argv: list[str] | None = None, node_class=None) -> int:
    """Console-script entry: run the node until SIGINT/SIGTERM; exit 1 on start-up errors.

    ``node_class``: the node to run (default :class:`RelocalizerNode`; the managed variant's
    entry point passes its own).
    """
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
        node = (node_class or RelocalizerNode)()
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
