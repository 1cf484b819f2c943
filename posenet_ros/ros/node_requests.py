"""``~/relocalize`` calls of the relocalization node: the pending book and the answers.

A call registers a :class:`~posenet_ros.ros.node_types.Request`; the first valid frame received
after it answers it (with ``refine`` on: the first verified one). The book's lock guards the
list and every future's completion: the executor thread adds calls and expires them, the worker
and the verification thread answer them.
"""

from __future__ import annotations

import json
import threading
import time

from posenet_ros.core import geometry
from posenet_ros.ros.node_types import NodeFrame, Request

__all__ = ['RequestBook', 'answer_payload', 'response_text']


def _pose_json(pose) -> dict:
    return {'position': [float(v) for v in pose.position],
            'orientation_xyzw': [float(v) for v in geometry.wxyz_to_xyzw(pose.quaternion_wxyz)]}


def verification_details(frame: NodeFrame) -> dict:
    """The ``verification`` section of an answer: the decision, its numbers, the coarse pose."""
    ver, camera = frame.result.verification, frame.result.camera
    return {'status': ver.status, 'reason': ver.reason, 'n_inliers': ver.n_inliers,
            'inlier_ratio': ver.inlier_ratio, 'reproj_rms_px': ver.reproj_rms_px,
            'ms': {k: round(v, 2) for k, v in ver.ms.items()},
            'intrinsics': frame.intrinsics_source,
            'coarse_position': [float(v) for v in camera.position],
            'coarse_orientation_xyzw':
                [float(v) for v in geometry.wxyz_to_xyzw(camera.quaternion_wxyz)]}


def answer_payload(frame: NodeFrame, map_frame: str, base_frame: str, model_id: str) -> dict:
    """The JSON answer of ``~/relocalize`` from a frame (refined poses when verified)."""
    result = frame.result
    stamp = result.stamp
    payload = {
        'frame_id': map_frame,
        'stamp': {'sec': int(stamp.sec), 'nanosec': int(stamp.nanosec)},
        'camera_frame': frame.camera_frame,
        'camera': _pose_json(result.best),
        'base_frame': base_frame,
        'raw_quat_norm': float(result.raw_quat_norm),
        'model_id': model_id,
        'verified': result.verified,
    }
    if result.best_base is None:
        payload['base'] = None
        payload['refused'] = frame.mount.note  # the reason; no initial pose is sent
    else:
        payload['base'] = _pose_json(result.best_base)
        payload['extrinsic_source'] = frame.mount.source
    if result.verified:
        payload['verification'] = verification_details(frame)
    return payload


def response_text(payload: dict | None, initial_pose_topic: str) -> tuple[bool, str]:
    """``(success, message)`` of the Trigger response for an answer (None: no frame came)."""
    if payload is None:
        return False, ''
    if payload.get('refused'):
        return False, (f'base-frame outputs refused, nothing sent on {initial_pose_topic}: '
                       f'{payload["refused"]}. The camera pose was: {json.dumps(payload)}')
    return True, json.dumps(payload)


class RequestBook:
    """Pending ``~/relocalize`` calls (see the module docstring); every method is thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests: list[Request] = []

    def add(self) -> Request:
        """Register a call made now (executor thread)."""
        req = Request(time.monotonic())
        with self._lock:
            self._requests.append(req)
        return req

    def since(self, t_received: float) -> list[Request]:
        """The calls a frame received at ``t_received`` may answer (made before it)."""
        with self._lock:
            return [r for r in self._requests if r.t_request <= t_received]

    def open(self, pending: list[Request]) -> list[Request]:
        """Those of ``pending`` not answered yet (by an earlier frame or the timeout)."""
        with self._lock:
            return [r for r in pending if not r.future.done()]

    def complete(self, pending: list[Request], payload: dict | None) -> None:
        """Answer ``pending`` with ``payload`` (None: timed out) and forget them."""
        with self._lock:
            for r in pending:
                if r in self._requests:
                    self._requests.remove(r)
                if not r.future.done():
                    r.future.set_result(payload)
