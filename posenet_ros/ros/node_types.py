"""What the relocalization node's threads hand each other: a frame's result and the requests.

Plain data (no rclpy besides the service future): the worker builds one :class:`NodeFrame` per
frame, the outputs publish it, the verification thread replaces its result with the verified
one, and the request book answers ``~/relocalize`` calls from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from rclpy.task import Future

from posenet_ros.localizer import FrameResult
from posenet_ros.ros.node_tf import Mount

__all__ = ['NodeFrame', 'Request']


@dataclass
class Request:
    """A pending ``~/relocalize`` call, served by the first valid frame received after it.

    ``future`` is completed exactly once (under the request book's lock): with the answer dict
    by the worker or the verification thread, or with ``None`` by the timeout timer.
    ``last_error``: why the latest frame did not answer it (any thread; a string swap).
    """

    t_request: float
    future: Future = field(default_factory=Future)
    last_error: str = ''


@dataclass
class NodeFrame:
    """One processed frame, handed from the worker to the outputs and the verification thread.

    ``result``: the pipeline's result (its ``stamp`` is the image header stamp);
    ``camera_frame``: the camera's frame id; ``mount``: the mount it was localized with;
    ``pending``: the ``~/relocalize`` requests it may answer; ``rgb``: the host RGB frame (for
    verification); ``intrinsics_source``: where verification took K from.
    """

    result: FrameResult
    camera_frame: str
    mount: Mount
    pending: list[Request]
    rgb: np.ndarray | None = None
    intrinsics_source: str = ''
