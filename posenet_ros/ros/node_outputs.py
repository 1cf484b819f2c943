"""The relocalization node's publishers and what goes on them (docs/node.md, "Interface").

Every output is stamped with the input image's stamp (``NodeFrame.result.stamp``). rclpy's
``publish`` is thread-safe: the worker publishes the coarse outputs and TF, the verification
thread ``~/verified_pose``, either of them ``/initialpose``.
"""

from __future__ import annotations

from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped, TransformStamped
from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time

from posenet_ros.core import geometry, ros_conversions
from posenet_ros.localizer import Pose
from posenet_ros.ros.node_types import NodeFrame
from posenet_ros.supervision import floor_covariance

__all__ = ['OUTPUT_QOS', 'TF_QOS', 'NodeOutputs', 'fill_pose']

# Outputs: reliable, depth 10 (CONVENTIONS). /tf: what tf2_ros.TransformBroadcaster uses
# (DynamicBroadcasterQoS: reliable, volatile, keep last 100).
OUTPUT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                        history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE)
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                    history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE)


def fill_pose(msg, pose: Pose) -> None:
    """Write ``pose`` (wxyz) into a pose or transform message (ROS xyzw order)."""
    ros_conversions.fill_pose(msg, pose.position, pose.quaternion_wxyz)


def _with_covariance(stamp, frame_id: str, pose: Pose, floor=None) -> PoseWithCovarianceStamped:
    msg = PoseWithCovarianceStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    fill_pose(msg.pose.pose, pose)
    cov = pose.covariance if floor is None else floor_covariance(pose.covariance, *floor)
    msg.pose.covariance = [float(v) for v in cov.reshape(-1)]
    return msg


class NodeOutputs:
    """Publishers of the node; ``cfg`` is the node's parameter dict (read per call)."""

    def __init__(self, node, cfg: dict, map_frame_default: str, stats, tf, warn):
        self._cfg = cfg
        self._map_frame_default = map_frame_default
        self._stats = stats
        self._tf = tf  # NodeTf: odom -> base look-ups (worker thread)
        self._warn = warn
        self.pose = node.create_publisher(PoseStamped, '~/pose', OUTPUT_QOS)
        self.cov = node.create_publisher(PoseWithCovarianceStamped, '~/pose_with_covariance',
                                         OUTPUT_QOS)
        # The base frame's pose (T_map_base) for consumers that read a pose as the robot's
        # (robot_localization); only with a known mount.
        self.base = node.create_publisher(PoseWithCovarianceStamped,
                                          '~/base_pose_with_covariance', OUTPUT_QOS)
        self.initial = node.create_publisher(PoseWithCovarianceStamped,
                                             cfg['initial_pose_topic'], OUTPUT_QOS)
        self.verified = None
        if cfg['refine'] == 'continuous':
            self.verified = node.create_publisher(PoseWithCovarianceStamped, '~/verified_pose',
                                                  OUTPUT_QOS)
        self.tf_mode = cfg['tf_mode']
        self._tf_pub = self._tf_msg = None
        if self.tf_mode != 'none':
            try:
                from tf2_msgs.msg import TFMessage
                self._tf_msg = TFMessage
                self._tf_pub = node.create_publisher(TFMessage, '/tf', TF_QOS)
            except ImportError:
                node.get_logger().error(
                    'tf2_msgs is not installed: no TF output (poses are still published); '
                    'install ros-kilted-tf2-msgs or build ros_interfaces/tf2_msgs into this '
                    'environment')
                self.tf_mode = 'none'

    def map_frame(self) -> str:
        """The frame of every published pose (parameter ``map_frame``, else the model's)."""
        return self._cfg['map_frame'] or self._map_frame_default

    def publish_camera(self, result) -> None:
        """The coarse camera pose, then with its covariance (worker thread)."""
        msg = PoseStamped()
        msg.header.stamp = result.stamp
        msg.header.frame_id = self.map_frame()
        fill_pose(msg.pose, result.camera)
        self.pose.publish(msg)  # the primary output first; the rest adds no latency to it
        self.cov.publish(_with_covariance(result.stamp, self.map_frame(), result.camera))
        self._stats.count('published')

    def publish_base_and_tf(self, frame: NodeFrame) -> None:
        """The base pose (with a mount) and the TF output (worker thread)."""
        result = frame.result
        if result.base is not None:
            self.base.publish(_with_covariance(result.stamp, self.map_frame(), result.base))
            self._stats.count('base_published')
        self._publish_tf(frame)

    def publish_verified(self, frame: NodeFrame) -> None:
        """The refined camera pose with its PnP covariance (verification thread)."""
        if self.verified is None or frame.result.refined is None:
            return
        self.verified.publish(_with_covariance(frame.result.stamp, self.map_frame(),
                                               frame.result.refined, self._floor()))
        self._stats.count('verified_published')

    def publish_initial_pose(self, frame: NodeFrame) -> None:
        """The base pose (refined when verified) once for a batch of ``~/relocalize`` calls."""
        self.publish_initial(frame.result.stamp, frame.result.best_base)

    def publish_initial(self, stamp, pose: Pose) -> None:
        """An initial-pose hint: ``T_map_base`` with its covariance floored (any thread)."""
        self.initial.publish(_with_covariance(stamp, self.map_frame(), pose, self._floor()))

    def _floor(self) -> tuple[float, float]:
        # A PnP covariance of millimetres would make AMCL seed a point-sized particle cloud
        # that cannot absorb the mount's or the stamp's error (docs/node.md, "Covariance floor").
        return self._cfg['covariance_floor_position'], self._cfg['covariance_floor_orientation']

    def _publish_tf(self, frame: NodeFrame) -> None:
        cfg, result = self._cfg, frame.result
        if self.tf_mode == 'none':
            return
        if self.tf_mode == 'camera':
            self._send_tf(result.stamp, frame.camera_frame + cfg['tf_child_suffix'],
                          result.camera)
            return
        # map_to_odom: T_map_odom = T_map_base * T_odom_base^-1 at the image stamp,
        # future-dated. A base pose refused for want of a mount refuses this too.
        if result.base is None:
            return
        t_odom_base, why = self._tf.lookup(cfg['odom_frame'], cfg['base_frame'], result.stamp,
                                           cfg['tf_timeout'])
        if t_odom_base is None:
            self._stats.count('tf_lookup_failed')
            self._warn('tf_lookup', f'TF lookup {cfg["odom_frame"]} -> {cfg["base_frame"]} '
                       f'failed: {why}')
            return
        odom = Pose.from_matrix(geometry.map_to_odom(result.base.matrix, t_odom_base))
        future = Time.from_msg(result.stamp) + Duration(seconds=cfg['transform_tolerance'])
        self._send_tf(future.to_msg(), cfg['odom_frame'], odom)

    def _send_tf(self, stamp, child: str, pose: Pose) -> None:
        tf = TransformStamped()
        tf.header.stamp = stamp
        tf.header.frame_id = self.map_frame()
        tf.child_frame_id = child
        fill_pose(tf.transform, pose)
        self._tf_pub.publish(self._tf_msg(transforms=[tf]))
