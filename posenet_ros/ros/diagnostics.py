"""Thread-safe counters and timings of the relocalization node, summarised for /diagnostics.

Plain Python (no rclpy): the node feeds events in from its subscription callback and worker, and
turns :meth:`NodeStats.snapshot` into a ``diagnostic_msgs/DiagnosticStatus`` once per period.
:class:`ThrottledLog` keeps repeated warnings of any thread to one per period.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque

import numpy as np

__all__ = ['NodeStats', 'ThrottledLog', 'OK', 'WARN', 'ERROR']

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
            rate = self._input_rate(delta)
            values = {'input_topic': input_topic, **self._rate_values(delta, dt, rate),
                      **self._frame_values(continuous)}
            values.update(self._verification_values())
            problems = self._problems(delta, rate, continuous, input_topic)
        level = WARN if problems else OK
        message = '; '.join(problems) if problems else 'relocalizing'
        return {'level': level, 'message': message, 'values': values}

    def _input_rate(self, delta: dict) -> dict:
        """Camera period, frames lost between stamps and the input fraction (lock held)."""
        period = _median_period_ns(self._info_stamps) or _median_period_ns(self._image_stamps)
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
        return {'period': period, 'expected': expected, 'ref': ref, 'fraction': fraction}

    def _rate_values(self, delta: dict, dt: float, rate: dict) -> dict:
        period, expected = rate['period'], rate['expected']
        return {
            'input_rate_hz': f'{delta["received"] / dt:.2f}',
            'camera_info_rate_hz': f'{delta["camera_info"] / dt:.2f}',
            'camera_period_ms': f'{period / 1e6:.2f}' if period else 'n/a',
            'stamp_gap_frames_lost': str(self.totals['stamp_gap_frames_lost']),
            'input_fraction': f'{rate["fraction"]:.3f}' if expected else 'n/a',
            'input_rate_reference': rate['ref'],
            'base_outputs': self._base_outputs,
            'base_outputs_refused': str(self.totals['base_outputs_refused']),
            'output_rate_hz': f'{delta["published"] / dt:.2f}',
        }

    def _frame_values(self, continuous: bool) -> dict:
        infer = np.asarray(self._infer_ms, dtype=np.float64)
        age = np.asarray(self._age_ms, dtype=np.float64)
        values = {
            'inference_ms_p50': _pct(infer, 50),
            'inference_ms_p95': _pct(infer, 95),
            'frame_age_ms_p50': _pct(age, 50),
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
        return values

    def _verification_values(self) -> dict:
        attempts = sum(self.verification.values())
        if not attempts:
            return {}
        refine = np.asarray(self._refine_ms, dtype=np.float64)
        inliers = np.asarray(self._inliers, dtype=np.float64)
        return {
            'verify_attempts': str(attempts),
            'verify_verified': str(self.verification['verified']),
            'verify_unverified': str(self.verification['unverified']),
            'verify_rejected': str(self.verification['rejected']),
            'verification_rate': f'{self.verification["verified"] / attempts:.3f}',
            'inliers_p50': _pct(inliers, 50),
            'refine_ms_p50': _pct(refine, 50),
            'refine_ms_p95': _pct(refine, 95),
            'last_verification': self._last_verification,
        }

    def _problems(self, delta: dict, rate: dict, continuous: bool, input_topic: str) -> list:
        problems = []
        if delta['rejected']:
            problems.append(f'{delta["rejected"]} frame(s) rejected')
        if delta['stale']:
            problems.append(f'{delta["stale"]} stale frame(s) dropped')
        if not delta['received']:
            problems.append(f'no images on {input_topic or "the input topic"}')
        elif continuous and not delta['published'] and not delta['rate_limited']:
            problems.append('images arrive but no pose was published')
        if rate['expected'] and rate['fraction'] < MIN_INPUT_FRACTION:
            problems.append(
                f'input at {100 * rate["fraction"]:.0f}% of the camera rate ({rate["ref"]}): '
                "frames are lost before the node (README 'Running the node': shared-memory "
                "transport on the camera driver's side)")
        if delta['base_outputs_refused']:
            problems.append(f'base-frame outputs {self._base_outputs}')
        return problems


def _pct(a: np.ndarray, q: float) -> str:
    return f'{np.percentile(a, q):.2f}' if a.size else 'n/a'


class ThrottledLog:
    """Warnings logged at most once per ``period()`` seconds per key; safe from any thread.

    ``warn(key, text)`` logs through ``log`` (a logger's ``warning``) and counts what it held
    back, reported with the next warning of that key. ``period`` is read on every call (the
    node's ``log_throttle`` parameter may change at run time).
    """

    def __init__(self, log, period, clock=time.monotonic):
        self._log = log
        self._period = period
        self._clock = clock
        self._lock = threading.Lock()  # the worker, verification and executor threads warn
        self._last: dict[str, tuple[float, int]] = {}

    def warn(self, key: str, text: str) -> None:
        """Log ``text`` unless ``key`` was logged less than one period ago."""
        now = self._clock()
        with self._lock:
            last, suppressed = self._last.get(key, (-math.inf, 0))
            if now - last < self._period():
                self._last[key] = (last, suppressed + 1)
                return
            self._last[key] = (now, 0)
        extra = f' ({suppressed} similar suppressed)' if suppressed else ''
        self._log(text + extra)
