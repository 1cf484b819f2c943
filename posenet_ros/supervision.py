"""Supervision of a localizer (AMCL, slam_toolbox, ...) by verified camera poses. No ROS.

The node feeds a :class:`Supervisor` once per verification attempt; a ROS-free loop (the
closed-loop benchmark) can drive it with :class:`~posenet_ros.localizer.Localizer` results:

>>> sup = Supervisor(SupervisorConfig(recovery='auto'))
>>> action = sup.observe(stamp_ns, result.refined_base, t_map_base_or_None, t_odom_base)
>>> if action is not None:                     # publish action.pose on /initialpose
...     send(action.stamp_ns, action.pose)     # base frame in map, covariance floored
>>> sup.status(stamp_ns)['state']

Every pose is the *base* frame: ``verified`` is ``T_map_base`` verified against the scene map
(a :class:`~posenet_ros.localizer.Pose` with its PnP covariance), ``localizer`` what the
supervised localizer believes at the same stamp (``T_map_base``, a 4x4 or a ``Pose``; None
while it has no pose, e.g. no ``map -> odom`` yet), ``odom`` the odometry ``T_odom_base`` at
that stamp. Time is the stamps' (nanoseconds), never a wall clock, so simulated time and
replays behave as live runs do.

The rule, in short (docs/node.md, "Supervision"): a verified frame *agrees* with the localizer
when it is within ``max(threshold, k * sigma)`` of it in position and in angle (sigma from both
covariances), else it *disagrees*. The localizer is lost only when ``min_frames`` disagreeing
frames spanning at least ``min_span`` seconds also agree with each other once the odometry
between them is applied; one wrong verified frame can never do it. Then, with
``recovery='auto'``, one initial pose is sent (the newest of those frames), the supervisor waits
up to ``reinit_timeout`` for the localizer to agree, and retries after a growing back-off, up to
``max_attempts``, before it reports ``failed``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from posenet_ros.core import geometry
from posenet_ros.localizer import Pose

__all__ = ['Action', 'Supervisor', 'SupervisorConfig', 'STATES', 'RECOVERY_MODES',
           'floor_covariance', 'pose_difference']

RECOVERY_MODES = ('off', 'report', 'auto')
# uninitialized: the localizer has no pose; initializing: an initial pose was sent for it;
# unconfirmed: it has a pose no verified frame has compared yet; localized: the last
# comparison agreed; suspect: disagreeing frames, not yet consistent evidence; lost: consistent
# evidence (report mode, or auto held back by a guard); recovering: a re-initialization was sent;
# failed: max_attempts re-initializations did not make it agree; suspended: by the service.
STATES = ('off', 'suspended', 'uninitialized', 'initializing', 'unconfirmed', 'localized',
          'suspect', 'lost', 'recovering', 'failed')
_NS = 1e-9
_EPISODE = {'initializing': 'inits', 'recovering': 'reinits'}  # state -> counter prefix


@dataclass(frozen=True)
class SupervisorConfig:
    """Thresholds and switches of a :class:`Supervisor` (the node's ``supervise_*`` params).

    Distances in metres, angles in degrees, times in seconds, speed in m/s.
    """

    recovery: str = 'off'            # off | report | auto
    auto_initialize: bool = True     # send the first pose when the localizer has none
    max_position_error: float = 0.5  # disagreement threshold (m) ...
    max_angle_error: float = 10.0    # ... and (deg), raised to sigma_factor * sigma
    sigma_factor: float = 3.0
    min_frames: int = 3              # consistent disagreeing frames needed ...
    min_span: float = 0.3            # ... spanning at least this long (s)
    evidence_window: float = 5.0     # disagreements older than this are forgotten (s)
    consistency_position: float = 0.2  # verified frames agree with each other via odometry
    consistency_angle: float = 3.0
    reinit_timeout: float = 3.0      # wait this long for agreement after a send (s)
    retry_backoff: float = 2.0       # first wait before a retry (s), doubled each time
    max_attempts: int = 3
    min_reinit_interval: float = 5.0  # between two sends (s)
    max_speed: float = 0.0           # do not send above this odometry speed; 0 = no limit
    floor_position: float = 0.05     # covariance floor of the sent pose: stddev (m) ...
    floor_orientation: float = math.radians(2.0)  # ... and (rad)

    def __post_init__(self):
        if self.recovery not in RECOVERY_MODES:
            raise ValueError(f'recovery must be one of {", ".join(RECOVERY_MODES)}, got '
                             f'{self.recovery!r}')
        if self.min_frames < 2:
            raise ValueError('min_frames must be >= 2: one verified frame is never evidence')


@dataclass(frozen=True)
class Action:
    """Send ``pose`` (``T_map_base``, floored covariance) as the localizer's initial pose.

    ``kind``: ``'initialize'`` (it had no pose) or ``'reinitialize'``; ``stamp_ns``: the stamp
    of the verified frame the pose is from (stamp the message with it); ``attempt``: 1, 2, ...
    within one recovery; ``reason``: why, for the log.
    """

    kind: str
    pose: Pose
    stamp_ns: int
    attempt: int
    reason: str


@dataclass
class _Evidence:
    stamp_ns: int
    base: np.ndarray       # verified T_map_base
    odom: np.ndarray | None  # T_odom_base at the same stamp
    pose: Pose


def floor_covariance(cov, position_stddev: float, orientation_stddev: float) -> np.ndarray:
    """``cov`` (6x6, ROS order) with no direction of position / rotation below the floors.

    Each 3x3 block gets its eigenvalues raised to ``stddev**2`` (a positive semi-definite
    matrix is added, so the result stays a covariance and only grows); every diagonal entry,
    and the variance along any direction within a block, is then at least the floor's square.
    None (no covariance) gives the floor itself.
    """
    out = (np.zeros((6, 6)) if cov is None else
           np.array(cov, dtype=np.float64).reshape(6, 6))
    out = 0.5 * (out + out.T)
    for sl, floor in ((slice(0, 3), position_stddev), (slice(3, 6), orientation_stddev)):
        vals, vecs = np.linalg.eigh(out[sl, sl])
        deficit = np.clip(float(floor) ** 2 - vals, 0.0, None)
        out[sl, sl] += (vecs * deficit) @ vecs.T
    return 0.5 * (out + out.T)


def pose_difference(t_a: np.ndarray, t_b: np.ndarray) -> tuple[float, float]:
    """``(metres, degrees)`` between two 4x4 poses: position distance and rotation angle."""
    rel = geometry.compose(geometry.invert(t_a), t_b)
    cos = np.clip((np.trace(rel[:3, :3]) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.linalg.norm(t_a[:3, 3] - t_b[:3, 3])), float(np.degrees(np.arccos(cos)))


def _matrix(pose) -> np.ndarray | None:
    if pose is None:
        return None
    return pose.matrix if isinstance(pose, Pose) else np.asarray(pose, np.float64).reshape(4, 4)


def _sigmas(*covs) -> tuple[float, float]:
    """Combined 1-sigma of the position error norm (m) and the angle (deg) of covariances."""
    pos = ang = 0.0
    for cov in covs:
        if cov is not None:
            c = np.asarray(cov, np.float64).reshape(6, 6)
            pos += float(np.trace(c[:3, :3]))
            ang += float(np.trace(c[3:, 3:]))
    return math.sqrt(max(pos, 0.0)), math.degrees(math.sqrt(max(ang, 0.0)))


class Supervisor:
    """Watches a localizer through verified poses and decides when to (re-)initialize it.

    Feed it with :meth:`observe` in stamp order; read :meth:`status`. Not thread-safe: one
    caller (the node's verification thread) at a time.
    """

    def __init__(self, config: SupervisorConfig | None = None):
        self.config = config or SupervisorConfig()
        self.counters = {'observed': 0, 'compared': 0, 'agreed': 0, 'disagreed': 0,
                         'inits_sent': 0, 'inits_succeeded': 0, 'inits_failed': 0,
                         'reinits_sent': 0, 'reinits_succeeded': 0, 'reinits_failed': 0,
                         'detections': 0, 'held_by_guard': 0}
        self.state = 'off' if self.config.recovery == 'off' else 'uninitialized'
        self.reason = ''
        self.last_agreement_ns: int | None = None
        self.last_disagreement: tuple[float, float] | None = None
        self._evidence: deque[_Evidence] = deque()
        self._suspended = False
        self._seen_localizer = False  # it had a pose once: never auto-initialize it again
        self._last_send_ns: int | None = None
        self._deadline_ns: int | None = None  # while initializing / recovering
        self._retry_at_ns: int | None = None  # no new send before (back-off)
        self._attempts = 0
        self._prev_odom: tuple[int, np.ndarray] | None = None
        self._speed: float | None = None

    # --- control --------------------------------------------------------------------------------
    def configure(self, config: SupervisorConfig) -> None:
        """Change thresholds or modes at run time (the evidence so far is kept)."""
        was_off = self.config.recovery == 'off'
        self.config = config
        if config.recovery == 'off':
            self._set('off', 'recovery is off')
        elif was_off:
            self._reset('recovery switched on')

    def suspend(self) -> None:
        """Stop judging and acting until :meth:`resume` (e.g. while the robot is carried)."""
        self._suspended = True
        self._evidence.clear()
        self._set('suspended', 'suspended by request')

    def resume(self) -> None:
        """Judge again from scratch: no evidence, no attempts, not failed."""
        self._suspended = False
        self._reset('resumed')

    @property
    def suspended(self) -> bool:
        """Whether :meth:`suspend` is in effect."""
        return self._suspended

    def _reset(self, why: str) -> None:
        self._evidence.clear()
        self._attempts = 0
        self._deadline_ns = self._retry_at_ns = None
        self._set('off' if self.config.recovery == 'off' else 'uninitialized', why)

    def _set(self, state: str, reason: str) -> None:
        self.state, self.reason = state, reason

    # --- the one entry point --------------------------------------------------------------------
    def observe(self, stamp_ns: int, verified: Pose | None, localizer=None, odom=None, *,
                localizer_covariance=None, speed: float | None = None,
                localizer_publishing: bool = False) -> Action | None:
        """One frame: what to send now (an :class:`Action`), or None.

        ``verified``: the verified ``T_map_base`` (a ``Pose`` with covariance) or None (the
        frame was not verified: it only advances time). ``localizer``: the localizer's
        ``T_map_base`` at ``stamp_ns`` (4x4 or ``Pose``), None while it has no pose;
        ``localizer_covariance``: its 6x6, when known (else the ``Pose``'s). ``odom``:
        ``T_odom_base`` at ``stamp_ns`` (4x4 or ``Pose``) or None; ``speed``: m/s, else
        derived from consecutive odometry. ``localizer_publishing``: the localizer has a pose,
        only not at ``stamp_ns`` (e.g. AMCL's ``map -> odom`` is future-dated, so the frames of
        its first second precede its first stamp): a running localizer is never initialized.
        """
        cfg = self.config
        self.counters['observed'] += 1
        odom_m = _matrix(odom)
        self._track_speed(stamp_ns, odom_m, speed)
        if cfg.recovery == 'off' or self._suspended:
            return None
        self._expire(stamp_ns)
        loc_m = _matrix(localizer)
        if localizer_covariance is None and isinstance(localizer, Pose):
            localizer_covariance = localizer.covariance
        if loc_m is None:
            self._seen_localizer |= bool(localizer_publishing)
            return self._without_localizer(stamp_ns, verified, odom_m)
        self._seen_localizer = True
        if verified is None:
            if self.state == 'uninitialized':
                self._set('unconfirmed', 'the localizer has a pose; no verified frame yet')
            return None
        if self._last_send_ns is not None and stamp_ns < self._last_send_ns:
            return None  # a frame from before the last send says nothing about its effect
        return self._compare(stamp_ns, verified, loc_m, localizer_covariance, odom_m)

    # --- the states -----------------------------------------------------------------------------
    def _without_localizer(self, stamp_ns, verified, odom_m) -> Action | None:
        cfg = self.config
        if self.state in ('initializing', 'failed'):
            return None  # judged by the deadline / stays failed until resumed
        if self._seen_localizer:
            # It had a pose: a look-up that failed now (TF late, a gap) is no reason to
            # initialize a running localizer; say so and wait.
            self.reason = 'no localizer pose at this stamp (TF gap?)'
            return None
        self._set('uninitialized', 'the localizer has no pose (no map -> odom yet)')
        if verified is None or not (cfg.auto_initialize and cfg.recovery == 'auto'):
            return None
        if not self._add_evidence(stamp_ns, verified, odom_m):
            return None
        return self._send(stamp_ns, 'initialize', 'the localizer has no pose')

    def _compare(self, stamp_ns, verified, loc_m, loc_cov, odom_m) -> Action | None:
        cfg = self.config
        ver_m = verified.matrix
        err_m, err_deg = pose_difference(ver_m, loc_m)
        s_pos, s_ang = _sigmas(verified.covariance, loc_cov)
        lim_m = max(cfg.max_position_error, cfg.sigma_factor * s_pos)
        lim_deg = max(cfg.max_angle_error, cfg.sigma_factor * s_ang)
        self.counters['compared'] += 1
        if err_m <= lim_m and err_deg <= lim_deg:
            return self._agree(stamp_ns, err_m, err_deg)
        self.counters['disagreed'] += 1
        self.last_disagreement = (err_m, err_deg)
        why = (f'{err_m:.2f} m / {err_deg:.1f} deg from the localizer (limits {lim_m:.2f} m / '
               f'{lim_deg:.1f} deg)')
        if self.state in ('initializing', 'recovering', 'failed'):
            return None  # judged by the deadline; retries need fresh evidence after it
        if not self._add_evidence(stamp_ns, verified, odom_m):
            if self.state != 'lost':
                self._set('suspect', f'{why}; {len(self._evidence)} disagreeing frame(s)')
            return None
        if cfg.recovery == 'report':
            if self.state != 'lost':
                self.counters['detections'] += 1
            self._set('lost', f'consistent evidence: {why}')
            return None
        return self._send(stamp_ns, 'reinitialize', f'consistent evidence: {why}')

    def _agree(self, stamp_ns, err_m, err_deg) -> None:
        self.counters['agreed'] += 1
        self.last_agreement_ns = stamp_ns
        if self.state in _EPISODE:
            self.counters[f'{_EPISODE[self.state]}_succeeded'] += 1
        self._evidence.clear()
        self._attempts = 0
        self._deadline_ns = self._retry_at_ns = None
        self._set('localized', f'agrees: {err_m:.2f} m / {err_deg:.1f} deg')
        return None

    def _expire(self, stamp_ns: int) -> None:
        """A send without agreement by its deadline: retry later, or fail."""
        if self._deadline_ns is None or stamp_ns < self._deadline_ns:
            return
        cfg = self.config
        self._deadline_ns = None
        self._evidence.clear()
        if self._attempts >= cfg.max_attempts:
            if self.state in _EPISODE:
                self.counters[f'{_EPISODE[self.state]}_failed'] += 1
            self._set('failed', f'no agreement after {self._attempts} attempt(s); resume '
                      'supervision (or send a pose) to try again')
            return
        backoff = cfg.retry_backoff * 2.0 ** (self._attempts - 1)
        self._retry_at_ns = stamp_ns + int(backoff / _NS)
        self._set('lost', f'attempt {self._attempts} not confirmed within '
                  f'{cfg.reinit_timeout:.1f} s; retry after {backoff:.1f} s')

    # --- evidence -------------------------------------------------------------------------------
    def _add_evidence(self, stamp_ns, verified, odom_m) -> bool:
        """Add a frame; True when the evidence now suffices (consistent, enough, long enough)."""
        cfg = self.config
        self._evidence.append(_Evidence(stamp_ns, verified.matrix, odom_m, verified))
        horizon = stamp_ns - int(cfg.evidence_window / _NS)
        while self._evidence and self._evidence[0].stamp_ns < horizon:
            self._evidence.popleft()
        newest = self._evidence[-1]
        consistent = [e for e in self._evidence if self._consistent(e, newest)]
        span = (newest.stamp_ns - consistent[0].stamp_ns) * _NS
        return len(consistent) >= cfg.min_frames and span >= cfg.min_span

    def _consistent(self, old: _Evidence, new: _Evidence) -> bool:
        """Whether ``old`` predicts ``new`` through the odometry between them.

        ``T_map_base(new) ~ T_map_base(old) T_odom_base(old)^-1 T_odom_base(new)``; without
        odometry the frames must agree directly (the robot standing still).
        """
        if old is new:
            return True
        predicted = old.base
        if old.odom is not None and new.odom is not None:
            predicted = geometry.compose(old.base, geometry.compose(geometry.invert(old.odom),
                                                                    new.odom))
        err_m, err_deg = pose_difference(predicted, new.base)
        cfg = self.config
        return err_m <= cfg.consistency_position and err_deg <= cfg.consistency_angle

    # --- acting ---------------------------------------------------------------------------------
    def _guard(self, stamp_ns: int) -> str:
        """Why nothing may be sent now ('' when it may)."""
        cfg = self.config
        if cfg.max_speed > 0.0 and self._speed is not None and self._speed > cfg.max_speed:
            return f'moving at {self._speed:.2f} m/s (max_speed {cfg.max_speed:.2f})'
        if self._retry_at_ns is not None and stamp_ns < self._retry_at_ns:
            return f'back-off: retry in {(self._retry_at_ns - stamp_ns) * _NS:.1f} s'
        if self._last_send_ns is not None and \
                (stamp_ns - self._last_send_ns) * _NS < cfg.min_reinit_interval:
            return f'min_reinit_interval {cfg.min_reinit_interval:.1f} s since the last send'
        return ''

    def _send(self, stamp_ns: int, kind: str, why: str) -> Action | None:
        cfg = self.config
        held = self._guard(stamp_ns)
        if held:
            self.counters['held_by_guard'] += 1
            self._set('lost' if kind == 'reinitialize' else 'uninitialized',
                      f'{why}; held: {held}')
            return None
        if self._attempts == 0 and kind == 'reinitialize':
            self.counters['detections'] += 1
        newest = self._evidence[-1].pose
        pose = dataclasses.replace(newest, covariance=floor_covariance(
            newest.covariance, cfg.floor_position, cfg.floor_orientation))
        self._attempts += 1
        self._evidence.clear()
        self._last_send_ns = stamp_ns
        self._deadline_ns = stamp_ns + int(cfg.reinit_timeout / _NS)
        self._retry_at_ns = None
        self.counters['inits_sent' if kind == 'initialize' else 'reinits_sent'] += 1
        self._set('initializing' if kind == 'initialize' else 'recovering',
                  f'{kind} attempt {self._attempts}: {why}')
        return Action(kind, pose, stamp_ns, self._attempts, why)

    def _track_speed(self, stamp_ns, odom_m, speed) -> None:
        if speed is not None:
            self._speed = float(speed)
            return
        if odom_m is None:
            return
        prev = self._prev_odom
        if prev is not None and stamp_ns > prev[0]:
            self._speed = float(np.linalg.norm(odom_m[:3, 3] - prev[1][:3, 3])) / (
                (stamp_ns - prev[0]) * _NS)
        self._prev_odom = (stamp_ns, odom_m)

    # --- reporting ------------------------------------------------------------------------------
    def status(self, stamp_ns: int | None = None) -> dict:
        """State, reason and counters; times relative to ``stamp_ns`` (the newest stamp)."""
        since = None
        if stamp_ns is not None and self.last_agreement_ns is not None:
            since = (stamp_ns - self.last_agreement_ns) * _NS
        dis = self.last_disagreement
        return {'state': self.state, 'reason': self.reason, 'recovery': self.config.recovery,
                'time_since_agreement_s': since,
                'last_disagreement_m': None if dis is None else dis[0],
                'last_disagreement_deg': None if dis is None else dis[1],
                'speed_mps': self._speed, 'attempts': self._attempts,
                'evidence_frames': len(self._evidence), **self.counters}
