"""When each pose edge of a bag is valid: its own max gap, future-dating, why a frame has none.

A robot's TF edges tick at very different rates: wheel odometry ``odom -> base_footprint`` at
50 Hz, AMCL's ``map -> odom`` once per laser scan (5 Hz or slower). ``tf2`` answers a lookup
of ``map -> camera`` by interpolating every edge at the time on its own, so a slow ``map ->
odom`` composed with fast odometry is a normal, precise answer. One max gap for every edge
either drops most images (a gap sized for odometry) or interpolates odometry over seconds (a
gap sized for AMCL). So each edge gets its own: :data:`GAP_FACTOR` times its median sample
period (one missed sample plus jitter), at least :data:`MIN_GAP`; ``--max-gap`` overrides it
for every edge, or per edge (``CHILD_FRAME=SECONDS``, or ``TOPIC=SECONDS`` for a pose topic).

**Future-dating.** AMCL (and slam_toolbox) stamp ``map -> odom`` ``transform_tolerance``
seconds *after* the scan it was computed from (Nav2: 1.0 s), so that tf2 lookups of the newest
data do not wait for the next scan. tf2 takes the stamp as the time of the transform: a lookup
at an image's time then interpolates AMCL estimates made about a second earlier, a lag of the
odometry's drift over one second. For labels the transform belongs at the scan it was computed
from: it is AMCL's estimate of ``map -> odom`` then, and it stays AMCL's answer until the next
scan. So a future-dated edge is moved back to its publication time (the header stamp minus the
measured future-dating: the median of header stamp minus record time, relative to the other
edges of the chain, when that exceeds :data:`FUTURE_THRESHOLD`), interpolated between scans, and
its last value is held up to its max gap after it (AMCL promised it for ``transform_tolerance``).
``future_dating=0`` keeps tf2's reading of the stamps; a number replaces the measured offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from posenet_ros.core.errors import BagError, ExtrapolationError

__all__ = ['GAP_FACTOR', 'MIN_GAP', 'FUTURE_THRESHOLD', 'EdgeTiming', 'parse_max_gap',
           'edge_timing', 'apply_timing', 'missing_reason']

GAP_FACTOR = 2.5
MIN_GAP = 0.1  # s: fast edges keep the reader's former fixed gap
#: A median header-minus-record offset this far ahead of the chain's other edges is future-dating
#: (a transport latency makes it negative; a clock skew moves every edge alike).
FUTURE_THRESHOLD = 0.05  # s


@dataclass
class EdgeTiming:
    """How one edge's samples are read: its rate, its max gap, its future-dating (s)."""

    name: str
    rate_hz: float
    max_gap: float
    future_dated: float = 0.0

    def as_dict(self) -> dict:
        """JSON-friendly (rounded) for the bag statistics."""
        return {'rate_hz': round(self.rate_hz, 3), 'max_gap': round(self.max_gap, 4),
                'future_dated': round(self.future_dated, 4)}


def parse_max_gap(values):
    """``--max-gap`` words to the reader's ``max_gap``: None, one float, or ``{key: float}``.

    ``['0.3']`` -> 0.3 (every edge); ``['odom=0.5', 'base_footprint=0.1']`` -> a dict by child
    frame (or pose topic); a bare number next to per-edge items is the value of the others.
    """
    if values is None or isinstance(values, (int, float, dict)):
        return values
    out: dict[str, float] = {}
    for word in values:
        key, sep, value = str(word).rpartition('=')
        try:
            seconds = float(value)
        except ValueError:
            raise BagError(f'--max-gap takes SECONDS or FRAME=SECONDS, got {word!r}') from None
        if seconds <= 0:
            raise BagError(f'--max-gap must be > 0 s, got {word!r}')
        out[key if sep else '*'] = seconds
    return out['*'] if list(out) == ['*'] else out


def _gap_for(key: str, max_gap, period: float) -> float:
    if isinstance(max_gap, dict):
        given = max_gap.get(key, max_gap.get('*'))
    else:
        given = max_gap
    return float(given) if given is not None else max(GAP_FACTOR * period, MIN_GAP)


def edge_timing(key: str, name: str, stamps_ns, offsets_ns, baseline_ns: float, max_gap,
                future_dating='auto') -> EdgeTiming:
    """The :class:`EdgeTiming` of an edge (``key``: child frame or topic, for ``max_gap``)."""
    st = np.asarray(stamps_ns, dtype=np.float64)
    period = float(np.median(np.diff(st))) * 1e-9 if len(st) > 1 else 0.0
    rate = 1.0 / period if period > 0 else 0.0
    ahead = (float(np.median(offsets_ns)) - baseline_ns) * 1e-9 if len(offsets_ns) else 0.0
    if future_dating == 'auto':
        shift = ahead if ahead > FUTURE_THRESHOLD else 0.0
    else:
        shift = float(future_dating) if ahead > FUTURE_THRESHOLD else 0.0
    return EdgeTiming(name, rate, _gap_for(key, max_gap, period), shift)


def apply_timing(series, timing: EdgeTiming) -> None:
    """Give ``series`` its max gap, and move a future-dated one back to its publication."""
    series.max_gap_ns = int(round(timing.max_gap * 1e9))
    if timing.future_dated:
        shift = int(round(timing.future_dated * 1e9))
        series.stamps = [s - shift for s in series.stamps]
        series.hold_ns = series.max_gap_ns


def missing_reason(chain, t_ns: int) -> str | None:
    """Why ``compose_chain(chain, t_ns)`` has no value (the first edge that fails), or None."""
    for series, _ in chain:
        try:
            series.at(t_ns)
        except ExtrapolationError:
            if not series.stamps:
                return f'no {series.name} at all'
            if t_ns < series.stamps[0]:
                return f'image before the first {series.name}'
            if t_ns > series.stamps[-1]:
                return f'image after the last {series.name} (beyond its max gap)'
            return f'{series.name} gap longer than its max gap'
    return None
