"""posenet_ros: real-time monocular camera relocalization with PoseNet for ROS 2.

The core (this package minus ``posenet_ros.ros``) imports no rclpy.
"""

__version__ = '0.1.0'
