"""The relocalization node's TF side: the listener, look-ups and the camera mount.

:class:`NodeTf` answers the two questions the node asks TF: the mount of the camera on the base
(``T_base_cam``, from TF or the ``camera_in_base`` parameter) once per frame, and ``odom ->
base`` for the map_to_odom output. Both run on the node's worker thread, which owns this object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rclpy.duration import Duration
from rclpy.time import Time

from posenet_ros.core import geometry
from posenet_ros.core.ros_conversions import msg_to_matrix
from posenet_ros.core.transforms import extrinsic_matrix

__all__ = ['Mount', 'NodeTf']


@dataclass(frozen=True)
class Mount:
    """The camera mount of one frame.

    ``camera_in_base``: ``T_base_cam`` (4x4), None when unknown; ``source``: ``'tf'`` or
    ``'parameter camera_in_base'``; ``note``: why TF gave none (with the parameter), or why
    base-frame outputs are refused (without a mount).
    """

    camera_in_base: np.ndarray | None
    source: str = ''
    note: str = ''


class NodeTf:
    """TF listener and look-ups of the node (see the module docstring).

    ``need_lookup``: map_to_odom output or the TF extrinsic is on. The listener is tf2_ros when
    installed, else the built-in ``/tf`` + ``/tf_static`` listener.
    """

    def __init__(self, node, need_lookup: bool, log):
        self.buffer = None
        self.source = 'none'
        # False after a failed mount look-up: later frames do not wait for it (worker thread).
        self._extrinsic_tf_ok = True
        if not need_lookup:
            return
        try:
            import tf2_ros  # lazy: not available as a wheel
            self.buffer = tf2_ros.Buffer()
            self._listener = tf2_ros.TransformListener(self.buffer, node)
            self.source = 'tf2_ros'
        except ImportError:
            # No tf2_ros (ROS 2 from PyPI): the built-in /tf + /tf_static listener answers the
            # same look-ups.
            try:
                from posenet_ros.ros.tf_buffer import TfBuffer, TfListener
                self.buffer = TfBuffer()
                self._listener = TfListener(self.buffer, node)
                self.source = 'built-in /tf listener (tf2_ros absent)'
                log.info('tf2_ros is not available: TF look-ups use the built-in /tf + '
                         '/tf_static listener')
            except ImportError:
                log.error('neither tf2_ros nor tf2_msgs is installed: no TF look-ups '
                          '(map_to_odom and the TF extrinsic are unavailable)')

    def lookup(self, target: str, source: str, stamp, timeout: float):
        """``(T_target_source, '')`` at the header ``stamp``, or ``(None, why)``."""
        if self.buffer is None:
            return None, 'no TF listener'
        try:
            tf = self.buffer.lookup_transform(target, source, Time.from_msg(stamp),
                                              timeout=Duration(seconds=timeout))
        except Exception as exc:  # tf2 LookupException / ExtrapolationException / ...
            return None, f'{type(exc).__name__}: {exc}'
        return msg_to_matrix(tf), ''

    def mount(self, cfg: dict, camera_frame: str, stamp) -> Mount:
        """The camera mount at ``stamp``: from TF, else ``camera_in_base``, else refused.

        Never a guess: a camera is not mounted at the identity (its optical frame looks along
        z, the base along x), so without TF and without the parameter nothing is assumed.
        """
        base = cfg['base_frame']
        tf_why = 'use_tf_extrinsic is false'
        if cfg['use_tf_extrinsic']:
            if self.buffer is None:
                tf_why = 'no TF listener (neither tf2_ros nor tf2_msgs is installed)'
            else:
                # After a failure, do not wait tf_timeout on every frame for a mount that
                # is not in TF (that would cap the output rate); the next success re-arms it.
                timeout = cfg['tf_timeout'] if self._extrinsic_tf_ok else 0.0
                t_cam_base, why = self.lookup(camera_frame, base, stamp, timeout)
                self._extrinsic_tf_ok = t_cam_base is not None
                if t_cam_base is not None:
                    return Mount(geometry.invert(t_cam_base), 'tf')
                tf_why = f'TF has no {base} -> {camera_frame} ({why})'
        if cfg['camera_in_base']:
            return Mount(extrinsic_matrix(cfg['camera_in_base']), 'parameter camera_in_base',
                         tf_why)
        return Mount(None, '', (f'no extrinsic: {tf_why}, and camera_in_base is unset; publish '
                                f'{base} -> {camera_frame} on TF (URDF / '
                                'static_transform_publisher) or set camera_in_base [x, y, z, '
                                'qx, qy, qz, qw] (docs/node.md, "Camera extrinsic")'))

