"""A ``rosbags`` writer of camera, pose and TF messages, as a robot's recording would hold them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from posenet_ros.core.errors import ConfigError
from posenet_ros.core.geometry import matrix_to_pose, wxyz_to_xyzw
from posenet_ros.core.ros_conversions import ns_to_stamp

__all__ = ['RosbagWriter']


class RosbagWriter:
    """Thin helper over ``rosbags`` to write camera, pose and TF messages (Humble+ types).

    Stamps are float seconds; each message's record time equals its header stamp unless
    ``record`` gives another (a future-dated transform is recorded when it is published).
    """

    def __init__(self, path, storage: str = 'sqlite3'):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        plugins = {'sqlite3': StoragePlugin.SQLITE3, 'mcap': StoragePlugin.MCAP}
        if storage not in plugins:
            raise ConfigError(f"storage must be 'sqlite3' or 'mcap', got {storage!r}")
        self.ts = get_typestore(Stores.ROS2_JAZZY)
        self.writer = Writer(Path(path), version=9, storage_plugin=plugins[storage])
        self.writer.open()
        self.conns: dict[str, object] = {}

    def _conn(self, topic: str, msgtype: str):
        if topic not in self.conns:
            self.conns[topic] = self.writer.add_connection(topic, msgtype, typestore=self.ts)
        return self.conns[topic]

    def _header(self, stamp: float, frame_id: str):
        T = self.ts.types
        sec, nanosec = ns_to_stamp(round(stamp * 1e9))
        return T['std_msgs/msg/Header'](
            stamp=T['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec), frame_id=frame_id)

    def write(self, topic: str, msgtype: str, msg, stamp: float) -> None:
        """Serialise ``msg`` and write it with record time ``stamp`` (s)."""
        self.writer.write(self._conn(topic, msgtype), int(round(stamp * 1e9)),
                          self.ts.serialize_cdr(msg, msgtype))

    def image(self, topic, stamp, rgb, frame_id='camera_optical', encoding='rgb8',
              row_padding=0):
        """sensor_msgs/Image from an RGB array in any supported encoding (with row padding)."""
        from posenet_ros.core.image_conversion import rgb_to_image_fields

        f = rgb_to_image_fields(rgb, encoding, row_padding=row_padding)
        msg = self.ts.types['sensor_msgs/msg/Image'](
            header=self._header(stamp, frame_id), height=f['height'], width=f['width'],
            encoding=f['encoding'], is_bigendian=int(f['is_bigendian']), step=f['step'],
            data=np.frombuffer(f['data'], np.uint8))
        self.write(topic, 'sensor_msgs/msg/Image', msg, stamp)

    def compressed(self, topic, stamp, rgb, frame_id='camera_optical', fmt='jpeg', quality=90):
        """sensor_msgs/CompressedImage (image_transport's JPEG/PNG payload)."""
        from posenet_ros.core.image_conversion import rgb_to_compressed

        form, data = rgb_to_compressed(rgb, fmt, quality)
        msg = self.ts.types['sensor_msgs/msg/CompressedImage'](
            header=self._header(stamp, frame_id), format=form, data=np.frombuffer(data, np.uint8))
        self.write(topic, 'sensor_msgs/msg/CompressedImage', msg, stamp)

    def camera_info(self, topic, stamp, K, width, height, frame_id='camera_optical'):
        """sensor_msgs/CameraInfo of an undistorted pinhole camera."""
        T = self.ts.types
        K = np.asarray(K, dtype=np.float64)
        P = np.concatenate([K, np.zeros((3, 1))], axis=1)
        msg = T['sensor_msgs/msg/CameraInfo'](
            header=self._header(stamp, frame_id), height=int(height), width=int(width),
            distortion_model='plumb_bob', d=np.zeros(5), k=K.ravel(), r=np.eye(3).ravel(),
            p=P.ravel(), binning_x=0, binning_y=0,
            roi=T['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0,
                                                      do_rectify=False))
        self.write(topic, 'sensor_msgs/msg/CameraInfo', msg, stamp)

    def _pose(self, position, q_wxyz):
        T = self.ts.types
        x, y, z, w = wxyz_to_xyzw(q_wxyz)
        return T['geometry_msgs/msg/Pose'](
            position=T['geometry_msgs/msg/Point'](x=float(position[0]), y=float(position[1]),
                                                  z=float(position[2])),
            orientation=T['geometry_msgs/msg/Quaternion'](x=x, y=y, z=z, w=w))

    def pose(self, topic, stamp, position, q_wxyz, frame_id='map',
             msgtype='geometry_msgs/msg/PoseStamped', child_frame_id='camera_optical',
             record=None):
        """A pose message (PoseStamped, PoseWithCovarianceStamped or Odometry); q is wxyz."""
        T = self.ts.types
        pose = self._pose(position, q_wxyz)
        header = self._header(stamp, frame_id)
        if msgtype == 'geometry_msgs/msg/PoseStamped':
            msg = T[msgtype](header=header, pose=pose)
        else:
            cov = T['geometry_msgs/msg/PoseWithCovariance'](pose=pose, covariance=np.eye(6).ravel()
                                                            * 0.01)
            if msgtype == 'geometry_msgs/msg/PoseWithCovarianceStamped':
                msg = T[msgtype](header=header, pose=cov)
            else:
                vec = T['geometry_msgs/msg/Vector3']
                twist = T['geometry_msgs/msg/TwistWithCovariance'](
                    twist=T['geometry_msgs/msg/Twist'](linear=vec(x=0.0, y=0.0, z=0.0),
                                                       angular=vec(x=0.0, y=0.0, z=0.0)),
                    covariance=np.zeros(36))
                msg = T[msgtype](header=header, child_frame_id=child_frame_id, pose=cov,
                                 twist=twist)
        self.write(topic, msgtype, msg, stamp if record is None else record)

    def tf(self, stamp, transforms, static: bool = False, record=None):
        """One TFMessage on /tf (or /tf_static) of ``[(parent, child, T_parent_child 4x4)]``."""
        T = self.ts.types
        items = []
        for parent, child, mat in transforms:
            p, q = matrix_to_pose(mat)
            x, y, z, w = wxyz_to_xyzw(q)
            items.append(T['geometry_msgs/msg/TransformStamped'](
                header=self._header(stamp, parent), child_frame_id=child,
                transform=T['geometry_msgs/msg/Transform'](
                    translation=T['geometry_msgs/msg/Vector3'](x=p[0], y=p[1], z=p[2]),
                    rotation=T['geometry_msgs/msg/Quaternion'](x=x, y=y, z=z, w=w))))
        self.write('/tf_static' if static else '/tf', 'tf2_msgs/msg/TFMessage',
                   T['tf2_msgs/msg/TFMessage'](transforms=items),
                   stamp if record is None else record)

    def close(self):
        """Finish the bag (writes metadata.yaml)."""
        self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        if exc_type is None:
            self.close()
        else:
            self.writer.close()
