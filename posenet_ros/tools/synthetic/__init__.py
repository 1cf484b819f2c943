"""A procedurally textured 3D courtyard rendered from known poses (dataset folder + rosbag2).

- :mod:`.scene`: the courtyard (ground, walls, crates, wall markers) and its texture atlas;
- :mod:`.raycast`: ray casting of the scene from a camera pose;
- :mod:`.rig`: the camera, its mount on the robot, the odometry's drift and the train/test laps;
- :mod:`.robot`: a simulated robot driving a lap (occupancy grid, laser, wheel odometry, camera)
  for the supervision tests and benchmark;
- :mod:`.rosbag_writer`: camera, pose and TF messages into a rosbag2 (``rosbags``);
- :mod:`.writers`: the manifest dataset folder and the bag of a trajectory;
- :mod:`.cli`: ``posenet-ros synth --out DIR [--bag]`` writes a manifest dataset
  (``DIR/dataset``) and optionally a rosbag2 of the test trajectory (``DIR/bag``).

The names below are the Python interface (tests, tools and benchmarks import them from here).
"""

from posenet_ros.tools.synthetic.cli import main
from posenet_ros.tools.synthetic.raycast import render
from posenet_ros.tools.synthetic.rig import (
    T_BASE_CAM,
    T_BASE_CAMLINK,
    T_CAMLINK_OPTICAL,
    SceneConfig,
    camera_matrix,
    look_rotation,
    t_map_odom,
    trajectory,
)
from posenet_ros.tools.synthetic.robot import SimRobot, occupancy_grid, robot_mount
from posenet_ros.tools.synthetic.rosbag_writer import RosbagWriter
from posenet_ros.tools.synthetic.scene import MAGENTA, ROOM, WALL_HEIGHT, Scene, make_scene
from posenet_ros.tools.synthetic.writers import write_bag, write_dataset

__all__ = [
    'SceneConfig', 'Scene', 'make_scene', 'render', 'trajectory', 'write_dataset', 'write_bag',
    'RosbagWriter', 'camera_matrix', 'look_rotation', 'T_BASE_CAM', 'T_BASE_CAMLINK',
    'T_CAMLINK_OPTICAL', 't_map_odom', 'main', 'ROOM', 'WALL_HEIGHT', 'MAGENTA', 'SimRobot',
    'occupancy_grid', 'robot_mount',
]
