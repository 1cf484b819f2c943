"""Geometry, transforms, stamps, errors, atomic files, progress: no torch, no rclpy."""
