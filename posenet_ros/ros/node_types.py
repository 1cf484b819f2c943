"""What the relocalization node's threads hand each other: a frame's result and the requests.

Plain data (no rclpy besides the service future): the worker builds one :class:`NodeFrame` per
frame, the outputs publish it, the verification thread replaces its result with the verified
one, and the request book answers ``~/relocalize`` calls from it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
from rclpy.task import Future

from posenet_ros.localizer import FrameResult
from posenet_ros.ros.node_tf import Mount

__all__ = ['NewestSlot', 'NodeFrame', 'Request']


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


class NewestSlot:
    """A one-item hand-over between threads where the newest item wins (thread-safe).

    :meth:`put` replaces an item not taken yet (and says so, for the drop counters);
    :meth:`take` blocks until an item arrives and returns None once :meth:`stop` was called.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._item = None
        self._running = True

    def put(self, item) -> bool:
        """Offer ``item``; True when it replaced one that was never taken."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
        return replaced

    def take(self):
        """The newest item (waiting for one), or None after :meth:`stop`."""
        with self._cond:
            while self._running and self._item is None:
                self._cond.wait(0.5)
            if not self._running:
                return None
            item, self._item = self._item, None
            return item

    def stop(self) -> None:
        """Wake every :meth:`take` with None, now and later."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
