"""Thread-safe counters and timings of the relocalization node, summarised for /diagnostics.

Plain Python (no rclpy): the node feeds events in from its subscription callback and worker, and
turns :meth:`NodeStats.snapshot` into a ``diagnostic_msgs/DiagnosticStatus`` once per period.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

import numpy as np

__all__ = ['NodeStats', 'OK', 'WARN', 'ERROR']

# diagnostic_msgs/DiagnosticStatus levels (bytes in the message; ints here).
OK, WARN, ERROR = 0, 1, 2
# Input below this fraction of the camera's rate is a warning (frames lost before the node).
MIN_INPUT_FRACTION = 0.5


def _median_period_ns(stamps) -> float | None:
    """Median positive gap of a stamp sequence (ns), None with fewer than two stamps."""
    gaps = np.diff(np.asarray(stamps, dtype=np.int64))
    gaps = gaps[gaps > 0]
    return float(np.median(gaps)) if gaps.size else None


class NodeStats:
    """Event counters (totals), per-period rates and rolling latency percentiles.

    ``window`` is the number of recent frames the percentiles (inference time, frame age) cover.
    """

    def __init__(self, window: int = 200, clock=time.monotonic):
        self._lock = threading.Lock()
        self._clock = clock
        self.totals: Counter = Counter()
        self.rejected: Counter = Counter()  # reason -> count
        self._infer_ms: deque = deque(maxlen=window)
        self._age_ms: deque = deque(maxlen=window)
        self._last_raw_norm = float('nan')
        self._last_error = ''
        self._mark_time = clock()
        self._mark_totals: Counter = Counter()
        self._mark_lost = 0
        self._last_input_time: float | None = None
        self.verification: Counter = Counter()  # status -> count
        self._refine_ms: deque = deque(maxlen=window)
        self._inliers: deque = deque(maxlen=window)
        self._last_verification = ''
        # Input-rate reference: header stamps of camera_info and of received images (ns).
        self._info_stamps: deque = deque(maxlen=window)
        self._image_stamps: deque = deque(maxlen=window)
        self._prev_image_stamp: int | None = None
        self._gaps_pending: list[int] = []  # image stamp gaps (ns) not yet judged
        self._base_outputs = 'no pose yet'

    # --- events ---------------------------------------------------------------------------------
    def count(self, event: str, n: int = 1) -> None:
        """Increment a total: 'received', 'dropped', 'stale', 'published', 'rate_limited', ..."""
        with self._lock:
            self.totals[event] += n
            if event == 'received':
                self._last_input_time = self._clock()

    def image_stamp(self, stamp_ns: int) -> None:
        """Record a received image's header stamp (for frames lost between stamps)."""
        with self._lock:
            if stamp_ns <= 0:
                return
            if self._prev_image_stamp is not None and stamp_ns > self._prev_image_stamp:
                self._gaps_pending.append(stamp_ns - self._prev_image_stamp)
            self._prev_image_stamp = stamp_ns
            self._image_stamps.append(stamp_ns)

    def info_stamp(self, stamp_ns: int) -> None:
        """Record a camera_info header stamp: its median period is the camera's frame period."""
        with self._lock:
            if stamp_ns > 0:
                self._info_stamps.append(stamp_ns)

    def base_outputs(self, status: str, refused: bool = False) -> None:
        """State of the base-frame outputs ('ok (extrinsic: tf)', 'refused: ...')."""
        with self._lock:
            self._base_outputs = status
            if refused:
                self.totals['base_outputs_refused'] += 1

    def reject(self, reason: str, message: str = '') -> None:
        """Count a rejected frame (bad encoding, undecodable, non-finite output...)."""
        with self._lock:
            self.totals['rejected'] += 1
            self.rejected[reason] += 1
            if message:
                self._last_error = f'{reason}: {message}'

    def processed(self, inference_ms: float, age_s: float | None, raw_quat_norm: float) -> None:
        """Record one frame that went through the model (timings in ms / s)."""
        with self._lock:
            self._infer_ms.append(float(inference_ms))
            if age_s is not None:
                self._age_ms.append(1000.0 * float(age_s))
            self._last_raw_norm = float(raw_quat_norm)

    def verified(self, status: str, reason: str, n_inliers: int, refine_ms: float) -> None:
        """Record one verification attempt (status verified / unverified / rejected)."""
        with self._lock:
            self.verification[status] += 1
            self._refine_ms.append(float(refine_ms))
            self._inliers.append(int(n_inliers))
            self._last_verification = f'{status}: {reason}'

    # --- summary --------------------------------------------------------------------------------
    def snapshot(self, continuous: bool = True, input_topic: str = '') -> dict:
        """Summary since the previous snapshot: ``level``, ``message`` and ``values`` (str -> str).

        Rates cover the time since the previous call; totals and percentiles are cumulative /
        rolling. The level is WARN when frames were rejected or dropped as stale in the period,
        when no input arrived in the period, when continuous mode got input but published
        nothing, when base-frame outputs were refused, or when images arrive at less than
        :data:`MIN_INPUT_FRACTION` of the camera's rate.

        Camera rate: the camera_info rate when camera_info arrives (it is small, so transport
        rarely loses it), else the image stamps' own median period. Frames lost between two
        received images: ``round(gap / period) - 1`` for each header-stamp gap, with the
        period from camera_info stamps when there are any, else from the image stamps.
        """
        with self._lock:
            now = self._clock()
            dt = max(now - self._mark_time, 1e-6)
            keys = ('received', 'published', 'rejected', 'stale', 'dropped', 'rate_limited',
                    'camera_info', 'base_outputs_refused')
            delta = {k: self.totals[k] - self._mark_totals[k] for k in keys}
            self._mark_time, self._mark_totals = now, Counter(self.totals)
            infer = np.asarray(self._infer_ms, dtype=np.float64)
            age = np.asarray(self._age_ms, dtype=np.float64)

            def pct(a, q):
                return f'{np.percentile(a, q):.2f}' if a.size else 'n/a'

            period = _median_period_ns(self._info_stamps) or \
                _median_period_ns(self._image_stamps)
            if period:
                for gap in self._gaps_pending:
                    self.totals['stamp_gap_frames_lost'] += max(0, int(round(gap / period)) - 1)
                self._gaps_pending = []
            lost = self.totals['stamp_gap_frames_lost'] - self._mark_lost
            self._mark_lost = self.totals['stamp_gap_frames_lost']
            if delta['camera_info']:
                expected, ref = delta['camera_info'], 'camera_info'
            else:
                expected, ref = delta['received'] + lost, 'image stamps'
            fraction = delta['received'] / expected if expected else float('nan')
            values = {
                'input_topic': input_topic,
                'input_rate_hz': f'{delta["received"] / dt:.2f}',
                'camera_info_rate_hz': f'{delta["camera_info"] / dt:.2f}',
                'camera_period_ms': f'{period / 1e6:.2f}' if period else 'n/a',
                'stamp_gap_frames_lost': str(self.totals['stamp_gap_frames_lost']),
                'input_fraction': f'{fraction:.3f}' if expected else 'n/a',
                'input_rate_reference': ref,
                'base_outputs': self._base_outputs,
                'base_outputs_refused': str(self.totals['base_outputs_refused']),
                'output_rate_hz': f'{delta["published"] / dt:.2f}',
                'inference_ms_p50': pct(infer, 50),
                'inference_ms_p95': pct(infer, 95),
                'frame_age_ms_p50': pct(age, 50),
                'frame_age_ms_max': f'{age.max():.2f}' if age.size else 'n/a',
                'frames_received': str(self.totals['received']),
                'frames_published': str(self.totals['published']),
                'frames_dropped': str(self.totals['dropped']),
                'frames_stale': str(self.totals['stale']),
                'frames_rate_limited': str(self.totals['rate_limited']),
                'frames_rejected': str(self.totals['rejected']),
                'raw_quat_norm': f'{self._last_raw_norm:.4f}',
                'continuous': str(bool(continuous)).lower(),
                'last_error': self._last_error,
            }
            for reason, n in sorted(self.rejected.items()):
                values[f'rejected_{reason}'] = str(n)
            attempts = sum(self.verification.values())
            if attempts:
                refine = np.asarray(self._refine_ms, dtype=np.float64)
                inliers = np.asarray(self._inliers, dtype=np.float64)
                values.update({
                    'verify_attempts': str(attempts),
                    'verify_verified': str(self.verification['verified']),
                    'verify_unverified': str(self.verification['unverified']),
                    'verify_rejected': str(self.verification['rejected']),
                    'verification_rate': f'{self.verification["verified"] / attempts:.3f}',
                    'inliers_p50': pct(inliers, 50),
                    'refine_ms_p50': pct(refine, 50),
                    'refine_ms_p95': pct(refine, 95),
                    'last_verification': self._last_verification,
                })
            problems = []
            if delta['rejected']:
                problems.append(f'{delta["rejected"]} frame(s) rejected')
            if delta['stale']:
                problems.append(f'{delta["stale"]} stale frame(s) dropped')
            if not delta['received']:
                problems.append(f'no images on {input_topic or "the input topic"}')
            elif continuous and not delta['published'] and not delta['rate_limited']:
                problems.append('images arrive but no pose was published')
            if expected and fraction < MIN_INPUT_FRACTION:
                problems.append(
                    f'input at {100 * fraction:.0f}% of the camera rate ({ref}): frames are lost '
                    "before the node (README 'Running the node': shared-memory transport on the "
                    "camera driver's side)")
            if delta['base_outputs_refused']:
                problems.append(f'base-frame outputs {self._base_outputs}')
        level = WARN if problems else OK
        message = '; '.join(problems) if problems else 'relocalizing'
        return {'level': level, 'message': message, 'values': values}
