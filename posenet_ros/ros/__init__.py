"""The ROS 2 shell: the node, bag replay, live evaluation. The only rclpy importer."""
