"""The node's supervision of a localizer: the ROS shell of :mod:`posenet_ros.supervision`.

With ``recovery`` ``report`` or ``auto`` the worker hands a frame to verification at
``supervision_rate`` even when nobody asks for one (:meth:`NodeSupervision.due`), and the
verification thread calls :meth:`NodeSupervision.on_verified` after each attempt: it looks up
what the localizer believes (TF ``map_frame -> base_frame``) and the odometry (``odom_frame ->
base_frame``) at the image stamp, feeds the :class:`~posenet_ros.supervision.Supervisor`, and
publishes what it decides: one initial pose on ``initial_pose_topic``, the state as JSON on the
latched ``~/supervision`` and a status in ``/diagnostics``. ``~/supervise`` (SetBool) suspends
(false) and resumes (true) it.

Threads: the verification thread owns the Supervisor (``on_verified``); the executor thread
reads its status (diagnostics), stores the localizer's covariance (a reference swap) and
suspends or resumes it under the lock shared with the verification thread.
"""

from __future__ import annotations

import json
import math
import threading
import time

from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String
from std_srvs.srv import SetBool
from visualization_msgs.msg import Marker

from posenet_ros.core.errors import ConfigError
from posenet_ros.core.ros_conversions import stamp_to_ns
from posenet_ros.ros.diagnostics import ERROR, OK, WARN
from posenet_ros.supervision import Supervisor, SupervisorConfig

LATEST = TimeMsg()  # tf2's time 0: the latest transform

__all__ = ['NodeSupervision', 'STATE_QOS', 'check_config', 'state_marker',
           'supervisor_config']

# Latched: a late subscriber (rviz, a test, a monitor) gets the current state at once.
STATE_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                       history=HistoryPolicy.KEEP_LAST,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL)
_LEVELS = {'off': OK, 'suspended': OK, 'unconfirmed': OK, 'localized': OK, 'failed': ERROR}


def supervisor_config(cfg: dict) -> SupervisorConfig:
    """The Supervisor's configuration of the node's parameters."""
    return SupervisorConfig(
        recovery=cfg['recovery'], auto_initialize=cfg['auto_initialize'],
        max_position_error=cfg['supervise_position_error'],
        max_angle_error=cfg['supervise_angle_error'], min_frames=cfg['supervise_min_frames'],
        min_span=cfg['supervise_min_span'], reinit_timeout=cfg['reinit_timeout'],
        max_attempts=cfg['max_reinit_attempts'], min_reinit_interval=cfg['min_reinit_interval'],
        max_speed=cfg['max_speed'], floor_position=cfg['covariance_floor_position'],
        floor_orientation=cfg['covariance_floor_orientation'])


def check_config(cfg: dict) -> None:
    """Raise :class:`ConfigError` when ``recovery`` is on with parameters it cannot work with."""
    if cfg['recovery'] == 'off':
        return
    if cfg['refine'] == 'off':
        raise ConfigError(f'recovery {cfg["recovery"]} needs verified poses: set refine to '
                          'request or continuous (and give the node its scene map)')
    if cfg['tf_mode'] == 'map_to_odom':
        raise ConfigError(f'recovery {cfg["recovery"]} supervises the localizer that publishes '
                          'map -> odom, but tf_mode map_to_odom makes this node publish it: use '
                          'tf_mode camera or none')


class NodeSupervision:
    """Supervision of the node (see the module docstring); None of it runs with recovery off.

    ``node``: the rclpy node; ``cfg``: its parameter dict (read per call); ``tf``: its
    :class:`~posenet_ros.ros.node_tf.NodeTf`; ``outputs``: its
    :class:`~posenet_ros.ros.node_outputs.NodeOutputs`; ``warn``: its throttled warning.
    """

    def __init__(self, node, cfg: dict, tf, outputs, warn):
        check_config(cfg)
        if tf.buffer is None:
            raise ConfigError(f'recovery {cfg["recovery"]} needs TF look-ups (tf2_ros or '
                              'tf2_msgs) for map -> base and odom -> base')
        self._cfg, self._tf, self._outputs, self._warn = cfg, tf, outputs, warn
        self._log = node.get_logger()
        self._lock = threading.Lock()
        self._sup = Supervisor(supervisor_config(cfg))
        self._last_due = -math.inf  # worker thread
        self._last_stamp_ns: int | None = None
        self._published = None
        self._localizer_cov = None
        self._state_pub = node.create_publisher(String, '~/supervision', STATE_QOS)
        self._marker_pub = node.create_publisher(Marker, '~/supervision_marker', STATE_QOS)
        node.create_service(SetBool, '~/supervise', self._on_supervise)
        if cfg['localizer_pose_topic']:
            node.create_subscription(PoseWithCovarianceStamped, cfg['localizer_pose_topic'],
                                     self._on_localizer_pose, 10)
        self._publish_state()

    # --- worker thread --------------------------------------------------------------------------
    def due(self, t_received: float) -> bool:
        """Whether this frame should be verified for supervision (the budget allows one)."""
        if self._sup.suspended or t_received - self._last_due < 1.0 / self._cfg[
                'supervision_rate']:
            return False
        self._last_due = t_received
        return True

    # --- verification thread --------------------------------------------------------------------
    def on_verified(self, result) -> None:
        """Judge one verification attempt (a ``FrameResult``) and act on the decision."""
        cfg = self._cfg
        stamp_ns = stamp_to_ns(result.stamp)
        verified = result.refined_base if result.verified else None
        localizer = odom = None
        publishing = False
        if verified is not None:
            localizer = self._lookup(self._outputs.map_frame(), result.stamp, 'localizer')
            odom = self._lookup(cfg['odom_frame'], result.stamp, 'odometry')
            # Not at this stamp is not "no localizer": AMCL future-dates map -> odom, so a
            # frame can precede its first stamp; the latest transform tells it exists.
            publishing = localizer is not None or self._tf.lookup(
                self._outputs.map_frame(), cfg['base_frame'], LATEST, 0.0)[0] is not None
        with self._lock:
            config = supervisor_config(cfg)
            if config != self._sup.config:
                self._sup.configure(config)
            action = self._sup.observe(stamp_ns, verified, localizer, odom,
                                       localizer_covariance=self._localizer_cov,
                                       localizer_publishing=publishing)
            self._last_stamp_ns = stamp_ns
        if action is not None:
            self._outputs.publish_initial(result.stamp, action.pose)
            p = action.pose.position
            self._log.warning(f'supervision: {action.kind} attempt {action.attempt}: sent the '
                              f'verified base pose ({p[0]:.2f}, {p[1]:.2f}) on '
                              f'{cfg["initial_pose_topic"]}: {action.reason}')
        self._publish_state()

    def _lookup(self, target: str, stamp, what: str):
        cfg = self._cfg
        mat, why = self._tf.lookup(target, cfg['base_frame'], stamp, cfg['tf_timeout'])
        if mat is None and what == 'odometry':
            self._warn('supervise_odom', f'supervision: no odometry {target} -> '
                       f'{cfg["base_frame"]} ({why}); verified frames are compared directly')
        return mat

    # --- executor thread ------------------------------------------------------------------------
    def _on_localizer_pose(self, msg) -> None:
        self._localizer_cov = [float(v) for v in msg.pose.covariance]

    def _on_supervise(self, request, response):
        with self._lock:
            (self._sup.resume if request.data else self._sup.suspend)()
        response.success = True
        response.message = f'supervision {"resumed" if request.data else "suspended"}'
        self._log.info(response.message)
        self._publish_state()
        return response

    def status(self) -> dict:
        """The Supervisor's status (times relative to the newest frame's stamp)."""
        with self._lock:
            return self._sup.status(self._last_stamp_ns)

    def diagnostic(self, node_name: str, hardware_id: str) -> DiagnosticStatus:
        """The ``/diagnostics`` entry ``<node>: supervision``."""
        st = self.status()
        status = DiagnosticStatus()
        status.level = bytes([_LEVELS.get(st['state'], WARN)])
        status.name = f'{node_name}: supervision'
        status.message = f'{st["state"]}: {st["reason"]}' if st['reason'] else st['state']
        status.hardware_id = hardware_id
        status.values = [KeyValue(key=k, value=_text(v)) for k, v in st.items()]
        return status

    def _publish_state(self) -> None:
        st = self.status()
        key = (st['state'], st['reason'], st['inits_sent'], st['reinits_sent'])
        if key == self._published:
            return
        self._published = key
        self._state_pub.publish(String(data=json.dumps({**st, 'time': time.time()})))
        self._marker_pub.publish(state_marker(st, self._cfg['base_frame']))


# rviz colours of the states (RGB): what needs a look is yellow, what needs a person is red.
_STATE_COLOURS = {'localized': (0.2, 0.8, 0.2), 'failed': (0.9, 0.1, 0.1),
                  'lost': (0.9, 0.1, 0.1), 'recovering': (1.0, 0.6, 0.0),
                  'suspect': (1.0, 0.8, 0.0)}


def state_marker(status: dict, base_frame: str) -> Marker:
    """The supervision state as text above the robot in rviz (a Marker display).

    In the base frame at stamp 0, so rviz draws it with the latest TF: it follows the robot as
    the localizer places it, which is what the state is about.
    """
    m = Marker()
    m.header.frame_id = base_frame
    m.ns, m.id = 'posenet_supervision', 0
    m.type, m.action = Marker.TEXT_VIEW_FACING, Marker.ADD
    m.pose.position.z = 1.8
    m.pose.orientation.w = 1.0
    m.scale.z = 0.3  # text height, m
    m.color.r, m.color.g, m.color.b = _STATE_COLOURS.get(status['state'], (0.7, 0.7, 0.7))
    m.color.a = 1.0
    m.text = f"posenet: {status['state']}\n{status['reason']}"
    return m


def _text(value) -> str:
    if value is None:
        return 'n/a'
    return f'{value:.3f}' if isinstance(value, float) else str(value)
