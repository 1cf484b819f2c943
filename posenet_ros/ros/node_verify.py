"""The relocalization node's verification worker: its own thread, fed newest-frame-wins.

The worker thread hands over a :class:`~posenet_ros.ros.node_types.NodeFrame` (its coarse
result and host RGB frame); this thread verifies it against the scene map with
:meth:`posenet_ros.localizer.Localizer.verify` (no network pass: the retrieval feature came with
the coarse pose), publishes the refined pose and answers the ``~/relocalize`` calls the frame
may answer. An unstarted frame is replaced by a newer one (counted ``verify_dropped``), so the
coarse output keeps PoseNet's rate.

Ownership: this thread alone uses the Localizer's map side (its descriptor cache is not
thread-safe) and writes :attr:`VerificationWorker.intrinsics_source`; the camera_info callback
(executor thread) swaps :attr:`VerificationWorker.camera_info` (one reference assignment of an
immutable value, read once per frame here); the job slot is a locked ``NewestSlot``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass

import numpy as np

from posenet_ros.core.errors import MissingIntrinsicsError
from posenet_ros.ros.node_types import NewestSlot, NodeFrame

__all__ = ['CameraInfo', 'VerificationWorker']


@dataclass(frozen=True)
class CameraInfo:
    """The latest CameraInfo: K (3x3) for frames of width x height."""

    K: np.ndarray
    width: int
    height: int


class VerificationWorker:
    """Verification thread of the node.

    ``localizer``: the node's :class:`~posenet_ros.localizer.Localizer`; ``outputs``: its
    :class:`~posenet_ros.ros.node_outputs.NodeOutputs`; ``serve(frame)``: answers the frame's
    pending calls; ``stats`` / ``warn`` / ``info_topic``: the node's diagnostics and log.
    """

    def __init__(self, localizer, outputs, serve, stats, warn, info_topic: str):
        self._localizer = localizer
        self._outputs = outputs
        self._serve = serve
        self._stats = stats
        self._warn = warn
        self.info_topic = info_topic
        self.camera_info: CameraInfo | None = None
        self.intrinsics_source = 'none yet'
        # Called with every verification attempt's FrameResult (supervision), on this thread.
        self.supervise = None
        self._jobs = NewestSlot()
        self._thread = threading.Thread(target=self._run, name='posenet_verify', daemon=True)
        self._thread.start()

    def hand_over(self, frame: NodeFrame) -> None:
        """Give the thread the newest frame; an unstarted one is dropped (worker thread)."""
        if self._jobs.put(frame):
            # The dropped frame's calls stay pending (the new frame was built from the same
            # list of open calls), so nothing is lost.
            self._stats.count('verify_dropped')

    def stop(self) -> None:
        """Stop the thread (after the frame in progress)."""
        self._jobs.stop()
        self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while (frame := self._jobs.take()) is not None:
            try:
                self._verify(frame)
            except Exception as exc:  # never let one frame kill the thread
                self._stats.reject('verify_internal', f'{type(exc).__name__}: {exc}')
                self._warn('verify_internal', f'verification failed: {type(exc).__name__}: '
                           f'{exc}')
                for r in frame.pending:
                    r.last_error = f'verification failed: {exc}'

    def intrinsics(self, width: int, height: int) -> tuple[np.ndarray, str]:
        """K for a ``width x height`` frame: the camera_info's, else the map's (scaled)."""
        info = self.camera_info
        if info is not None:
            if (info.width, info.height) == (width, height):
                return info.K, 'camera_info'
            self._warn('camera_info_size', f'CameraInfo on {self.info_topic} is for '
                       f'{info.width}x{info.height} frames but the images are {width}x{height}; '
                       "using the map's intrinsics (publish the matching camera_info)")
        return self._localizer.intrinsics(width, height), 'map'

    def _verify(self, frame: NodeFrame) -> None:
        t0 = time.perf_counter()
        h, w = frame.rgb.shape[:2]
        try:
            K, source = self.intrinsics(w, h)
        except MissingIntrinsicsError as exc:
            self._stats.verified('unverified', str(exc), 0, 0.0)
            self._warn('intrinsics', str(exc))
            for r in frame.pending:
                r.last_error = f'not verified: {exc}'
            return
        self.intrinsics_source = source
        result = self._localizer.verify(frame.result, frame.rgb, K)
        ver = result.verification
        self._stats.verified(ver.status, ver.reason, ver.n_inliers,
                             (time.perf_counter() - t0) * 1000.0)
        if self.supervise is not None:
            self.supervise(result)
        if not result.verified:
            for r in frame.pending:
                r.last_error = f'not verified ({ver.status}: {ver.reason})'
            return
        frame = dataclasses.replace(frame, result=result, intrinsics_source=source)
        self._outputs.publish_verified(frame)
        if frame.pending:
            self._serve(frame)
