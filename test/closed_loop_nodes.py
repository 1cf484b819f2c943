"""The closed-loop test's other two nodes: the simulated robot and a Nav2-like AMCL.

Run as processes of their own (``python test/closed_loop_nodes.py robot|amcl [options]``), next
to the real relocalization node, all over DDS in simulated time:

* ``robot``: :class:`posenet_ros.tools.synthetic.robot.SimRobot` stepped at ``--rate`` Hz of
  simulated time, ``--rtf`` times real time. Each step publishes ``/clock``, TF ``odom ->
  base_link`` (the noisy wheel odometry), ``/scan`` (ray-cast from the true pose),
  ``/camera/image_raw`` + ``/camera/camera_info`` (rendered through the mount, which is on
  ``/tf_static``) and ``/sim/truth`` (the true base pose, for the test only); ``/map`` once
  (transient local, as map_server). ``--script`` (JSON) schedules kidnaps and what the camera
  sees: ``[{"t": 50, "kidnap": 2.0}, {"t": 40, "camera": "other"}, {"t": 65, "end": true}]``.
* ``amcl``: :class:`nav2_amcl.Nav2Amcl` (scripts/, the GPL bindings) as nav2_amcl's node runs it:
  ``/map``, ``/scan``, ``/initialpose`` and TF ``odom -> base_link`` in; ``map -> odom`` on
  ``/tf`` future-dated by ``transform_tolerance`` after every scan once it has a pose, and
  ``/amcl_pose`` on every filter update.
"""

from __future__ import annotations

import argparse
import array
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped, TransformStamped
from nav_msgs.msg import OccupancyGrid
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, LaserScan
from tf2_msgs.msg import TFMessage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))

from posenet_ros.core.geometry import matrix_to_pose  # noqa: E402
from posenet_ros.core.ros_conversions import (  # noqa: E402
    fill_pose,
    fill_stamp,
    msg_to_matrix,
    stamp_to_ns,
)
from posenet_ros.ros.tf_buffer import TfBuffer, TfListener  # noqa: E402
from posenet_ros.tools.synthetic import make_scene  # noqa: E402
from posenet_ros.tools.synthetic.robot import (  # noqa: E402
    SimRobot,
    occupancy_grid,
    planar_matrix,
    planar_of,
)

_NS = 1_000_000_000
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
SCANS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
TF_STATIC_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _transform(parent: str, child: str, t_ns: int, matrix) -> TransformStamped:
    tf = TransformStamped()
    tf.header.frame_id, tf.child_frame_id = parent, child
    fill_stamp(tf.header.stamp, t_ns)
    return fill_pose(tf, *matrix_to_pose(matrix))


# --- the robot -----------------------------------------------------------------------------------
class RobotNode(Node):
    """Publishes the simulated robot's sensors and the clock (see the module docstring)."""

    def __init__(self, args):
        super().__init__('sim_robot')
        self.args = args
        self.robot = SimRobot(make_scene(args.scene_seed), start_theta=args.start_theta,
                              seed=args.seed)
        self.other = make_scene(args.other_seed)
        self.camera = 'scene'
        self.pub = {
            'clock': self.create_publisher(Clock, '/clock', 10),
            'tf': self.create_publisher(TFMessage, '/tf', TF_QOS),
            'tf_static': self.create_publisher(TFMessage, '/tf_static', TF_STATIC_QOS),
            'scan': self.create_publisher(LaserScan, '/scan', SCANS),
            'image': self.create_publisher(Image, '/camera/image_raw', RELIABLE),
            'info': self.create_publisher(CameraInfo, '/camera/camera_info', RELIABLE),
            'truth': self.create_publisher(PoseStamped, '/sim/truth', RELIABLE),
            'map': self.create_publisher(OccupancyGrid, '/map', LATCHED),
        }
        self.t_ns = int(args.start_time * _NS)
        self.pub['tf_static'].publish(TFMessage(transforms=[_transform(
            'base_link', 'camera_optical', self.t_ns, self.robot.camera_in_base)]))
        self.pub['map'].publish(self._map_msg())

    def _map_msg(self) -> OccupancyGrid:
        grid = occupancy_grid(self.robot.scene)
        msg = OccupancyGrid()
        msg.header.frame_id = 'map'
        fill_stamp(msg.header.stamp, self.t_ns)
        msg.info.resolution = grid.resolution
        msg.info.width, msg.info.height = grid.width, grid.height
        msg.info.origin.position.x, msg.info.origin.position.y = grid.origin
        msg.info.origin.orientation.w = 1.0
        msg.data = array.array('b', grid.cells.ravel().tobytes())
        return msg

    def ready(self) -> bool:
        """Whether the camera, laser and truth have their subscribers."""
        return all(self.pub[k].get_subscription_count() > 0 for k in ('image', 'scan', 'truth'))

    def apply(self, event: dict) -> None:
        """One scripted event: a kidnap (ellipse angle offset) or what the camera sees."""
        if 'kidnap' in event:
            self.robot.kidnap(self.robot.theta + float(event['kidnap']))
        if 'camera' in event:
            self.camera = event['camera']
        self.get_logger().info(f'event at {self.robot.t:.1f} s: {event}')

    def step(self, dt: float) -> None:
        """Move, then publish the clock and every sensor at the new stamp."""
        self.robot.step(dt)
        self.t_ns += int(round(dt * _NS))
        clock = Clock()
        fill_stamp(clock.clock, self.t_ns)
        self.pub['clock'].publish(clock)
        odom = planar_matrix(*self.robot.odometry.pose)
        self.pub['tf'].publish(TFMessage(transforms=[_transform('odom', 'base_link', self.t_ns,
                                                                odom)]))
        self.pub['scan'].publish(self._scan())
        truth = PoseStamped()
        truth.header.frame_id = 'map'
        fill_stamp(truth.header.stamp, self.t_ns)
        self.pub['truth'].publish(fill_pose(truth, *matrix_to_pose(planar_matrix(
            *self.robot.truth))))
        self._publish_camera()

    def _scan(self) -> LaserScan:
        laser = self.robot.laser
        msg = LaserScan()
        msg.header.frame_id = 'base_link'
        fill_stamp(msg.header.stamp, self.t_ns)
        msg.angle_min, msg.angle_increment = -math.pi, laser.angle_increment
        msg.angle_max = -math.pi + laser.angle_increment * (laser.n_beams - 1)
        msg.range_min, msg.range_max = laser.range_min, laser.range_max
        msg.ranges = array.array('f', self.robot.scan().astype(np.float32).tobytes())
        return msg

    def _publish_camera(self) -> None:
        r = self.robot
        if self.camera == 'blank':
            rgb = np.full((r.height, r.width, 3), 128, np.uint8)
        else:
            rgb = r.frame(self.other if self.camera == 'other' else None)
        img = Image()
        img.header.frame_id = 'camera_optical'
        fill_stamp(img.header.stamp, self.t_ns)
        img.height, img.width, img.encoding, img.step = r.height, r.width, 'rgb8', 3 * r.width
        img.data = array.array('B', rgb.tobytes())
        info = CameraInfo()
        info.header = img.header
        info.height, info.width = r.height, r.width
        info.distortion_model = 'plumb_bob'
        info.d = [0.0] * 5
        info.k = [float(v) for v in r.K.ravel()]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.p = [float(v) for v in np.hstack([r.K, np.zeros((3, 1))]).ravel()]
        self.pub['info'].publish(info)
        self.pub['image'].publish(img)


def run_robot(args) -> int:
    """Wait for the subscribers, then run the script in simulated time."""
    rclpy.init()
    node = RobotNode(args)
    events = sorted(json.loads(args.script), key=lambda e: e['t'])
    deadline = time.monotonic() + args.wait
    while not node.ready() and time.monotonic() < deadline:
        time.sleep(0.05)
    node.get_logger().info(f'start (subscribers ready: {node.ready()})')
    dt = 1.0 / args.rate
    next_wall = time.monotonic()
    try:
        while True:
            while events and events[0]['t'] <= node.robot.t + 1e-9:
                event = events.pop(0)
                if event.get('end'):
                    node.get_logger().info('script done')
                    time.sleep(1.0)  # let the last messages go out
                    return 0
                node.apply(event)
            node.step(dt)
            # Behind schedule (a busy machine), simulated time slows down instead of catching
            # up in a burst of messages.
            next_wall = max(next_wall + dt / args.rtf, time.monotonic())
            time.sleep(max(0.0, next_wall - time.monotonic()))
    except KeyboardInterrupt:
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


# --- AMCL ----------------------------------------------------------------------------------------
class AmclNode(Node):
    """nav2_amcl's interface around :class:`nav2_amcl.Nav2Amcl` (see the module docstring)."""

    def __init__(self):
        super().__init__('amcl')
        self.filter = None
        self.tf = TfBuffer(cache_time=30.0)
        self._listener = TfListener(self.tf, self)  # TF in the default group: never blocked
        group = MutuallyExclusiveCallbackGroup()  # scans, map and initial poses in turn
        self.create_subscription(OccupancyGrid, '/map', self._on_map, LATCHED,
                                 callback_group=group)
        # Reliable and deep, unlike nav2_amcl's sensor-data QoS: on this shared machine a burst
        # of scans must not be dropped, or AMCL's accuracy would depend on the load.
        self.create_subscription(LaserScan, '/scan', self._on_scan, SCANS, callback_group=group)
        self.create_subscription(PoseWithCovarianceStamped, '/initialpose', self._on_initial_pose,
                                 RELIABLE, callback_group=group)
        self.tf_pub = self.create_publisher(TFMessage, '/tf', TF_QOS)
        self.pose_pub = self.create_publisher(PoseWithCovarianceStamped, '/amcl_pose', LATCHED)
        self.pending = None  # an initial pose that came before the map

    def _odom(self, t_ns: int, timeout: float):
        try:
            return planar_of(self.tf.lookup('odom', 'base_link', t_ns, timeout))
        except Exception as exc:  # noqa: BLE001 - extrapolation / unknown frame: skip
            self.get_logger().warning(f'no odom -> base_link at {t_ns * 1e-9:.2f} s: {exc}')
            return None

    def _on_map(self, msg: OccupancyGrid) -> None:
        from types import SimpleNamespace

        from nav2_amcl import Nav2Amcl  # the GPL bindings: this test process only

        cells = np.frombuffer(bytes(msg.data), np.int8).reshape(msg.info.height, msg.info.width)
        grid = SimpleNamespace(cells=cells, resolution=msg.info.resolution,
                               origin=(msg.info.origin.position.x, msg.info.origin.position.y))
        n = 180  # the simulated scanner's beams: replaced by the first scan's geometry
        self.filter = Nav2Amcl(grid, -math.pi + np.arange(n) * 2 * math.pi / n, 20.0)
        self.get_logger().info(f'map {msg.info.width}x{msg.info.height} received')
        if self.pending is not None:
            self._on_initial_pose(self.pending)

    def _on_initial_pose(self, msg: PoseWithCovarianceStamped) -> None:
        if self.filter is None:
            self.pending = msg
            return
        t_ns = stamp_to_ns(msg.header.stamp)
        pose = planar_of(msg_to_matrix(msg.pose))
        cov = np.asarray(msg.pose.covariance, float).reshape(6, 6)[np.ix_([0, 1, 5], [0, 1, 5])]
        then, now = self._odom(t_ns, 0.5), self._odom(0, 0.0)
        self.filter.initial_pose(pose, cov, then, now)
        self.get_logger().info(f'initial pose {np.round(pose, 3).tolist()} (stamp '
                               f'{t_ns * 1e-9:.2f} s), sigma {np.sqrt(np.diag(cov)).round(3)}')

    def _on_scan(self, msg: LaserScan) -> None:
        f = self.filter
        if f is None or not f.initialized:
            return
        t_ns = stamp_to_ns(msg.header.stamp)
        odom = self._odom(t_ns, 0.3)
        if odom is None:
            return
        f.angles = msg.angle_min + np.arange(len(msg.ranges)) * msg.angle_increment
        f.range_max = float(msg.range_max)
        if f.scan(np.asarray(msg.ranges, float), odom):
            self._publish_pose(msg.header.stamp)
        m = np.eye(4)
        m[:2, :2], m[:2, 3] = f.t_map_odom[:2, :2], f.t_map_odom[:2, 2]
        tol_ns = int(f.params.transform_tolerance * _NS)
        self.tf_pub.publish(TFMessage(transforms=[_transform('map', 'odom', t_ns + tol_ns, m)]))

    def _publish_pose(self, stamp) -> None:
        f = self.filter
        msg = PoseWithCovarianceStamped()
        msg.header.frame_id, msg.header.stamp = 'map', stamp
        fill_pose(msg.pose, *matrix_to_pose(planar_matrix(*f.pose)))
        cov = np.zeros((6, 6))
        c3 = f.covariance
        cov[np.ix_([0, 1, 5], [0, 1, 5])] = c3
        msg.pose.covariance = [float(v) for v in cov.ravel()]
        self.pose_pub.publish(msg)


def run_amcl(_args) -> int:
    """Spin the AMCL node until interrupted."""
    rclpy.init()
    node = AmclNode()
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def main(argv=None) -> int:
    """``robot`` or ``amcl`` (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest='which', required=True)
    robot = sub.add_parser('robot')
    robot.add_argument('--scene-seed', type=int, default=2)
    robot.add_argument('--other-seed', type=int, default=7)
    robot.add_argument('--seed', type=int, default=0)
    robot.add_argument('--start-theta', type=float, default=0.0)
    robot.add_argument('--start-time', type=float, default=1000.0)
    robot.add_argument('--rate', type=float, default=10.0)
    robot.add_argument('--rtf', type=float, default=1.0, help='simulated / real time')
    robot.add_argument('--wait', type=float, default=120.0, help='for subscribers (s)')
    robot.add_argument('--script', default='[{"t": 30, "end": true}]')
    sub.add_parser('amcl')
    args = ap.parse_args(argv)
    return run_robot(args) if args.which == 'robot' else run_amcl(args)


if __name__ == '__main__':
    sys.exit(main())
