"""Training in a wall-clock budget (``time_budget: 20m``): parse it, fit the epochs to it.

The budget is the whole command's wall time, counted from the start of the process (Python and
torch imports, data loading and image caching included) to the end of the export (and of the
scene map with ``map: true``). The trainer:

1. runs the first epoch as the *measuring epoch* (warm-up or peak learning rate: the cosine
   length is not known yet) and validates after it, so both costs are measured;
2. fits the epoch count: ``completed + floor(remaining / cost_per_epoch)``, where ``remaining``
   is the budget left minus the estimated export (and map) time and a small safety margin, and
   ``cost_per_epoch`` is the measured training epoch plus validation every ``val_every`` epochs
   (and once more after the last). The cosine learning-rate schedule starts there and runs
   over the remaining epochs (epoch 1 ran at the peak rate, after any warm-up);
3. after every epoch re-fits the epoch count with the mean of the last three measured epochs
   (a shared machine's load changes; one odd epoch does not decide), up or down. The cosine is
   re-spread, not restarted: its progress at the current step is kept and the rest of it is
   stretched or squeezed over the new remaining steps, so the learning rate stays continuous
   and still ends at its floor. When the deadline passes inside an epoch, that epoch ends
   early and training stops there.

``--resume`` counts the budget across runs: checkpoints store the wall time used so far, and a
resumed run gets ``time_budget`` minus that (its own start-up and data loading are counted
again). Pass a larger ``--time-budget`` when resuming to extend a run.

:class:`BudgetPlan` is the bookkeeping (deadline, measured costs); :class:`BudgetController`
makes the decisions above for the training loop and owns the budget's part of a checkpoint
(the bookkeeping plus the LR plan's anchor, :class:`~posenet_ros.training.schedule.SchedulePlan`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass, field

import numpy as np

from posenet_ros.core.errors import ConfigError
from posenet_ros.training.schedule import SchedulePlan

__all__ = ['parse_duration', 'format_duration', 'process_age_s', 'BudgetPlan',
           'export_estimate_s', 'BudgetController']

log = logging.getLogger(__name__)

_UNITS = {'h': 3600.0, 'm': 60.0, 's': 1.0}
_PART = re.compile(r'(\d+(?:\.\d*)?|\.\d+)\s*([hms])')


def parse_duration(value) -> float:
    """Seconds of ``'20m'``, ``'90s'``, ``'1h30m'``, ``'2.5h'``, ``'300'`` or ``300``.

    Raises :class:`ConfigError` for anything else, or a duration that is not > 0.
    """
    if isinstance(value, bool):
        raise ConfigError(f'time_budget: expected a duration like 20m, 90s, 1h30m or a number '
                          f'of seconds, got {value!r}')
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(' ', '')
        try:
            seconds = float(text)
        except ValueError:
            parts = _PART.findall(text)
            if not parts or ''.join(n + u for n, u in parts) != text or \
                    len({u for _, u in parts}) != len(parts):
                raise ConfigError(f'time_budget: cannot read {value!r}; give a duration like '
                                  '20m, 90s, 1h30m or a number of seconds') from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f'time_budget: {value!r} must be a positive duration')
    return seconds


def format_duration(seconds: float) -> str:
    """``4m05s``-style text of a duration."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f'{h}h{m:02d}m'
    return f'{m}m{s:02d}s' if m else f'{s}s'


def process_age_s() -> float:
    """Seconds since this process started (Linux ``/proc``); 0 where unknown."""
    try:
        with open('/proc/self/stat', encoding='ascii') as fh:
            fields = fh.read().rsplit(')', 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5): starttime, clock ticks after boot
        with open('/proc/uptime', encoding='ascii') as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf('SC_CLK_TCK'))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def export_estimate_s(backbone: str, pt2: bool, map_frames: int = 0) -> float:
    """Seconds the export (TorchScript, optional ``.pt2``) and optional scene map take.

    Measured on a 2-core CPU: EfficientNet-Lite0 TorchScript + ``.pt2`` 3.9 s (estimate 6 s);
    the bigger trunks are given 1.5x; the scene map a rough 0.12 s per frame (not measured
    for this estimate). Running late is caught after every epoch; a long export is not.
    """
    big = backbone in ('googlenet', 'resnet34', 'efficientnet_b0', 'mobilenet_v3_large')
    seconds = 2.0 + (4.0 if pt2 else 0.0)
    seconds *= 1.5 if big else 1.0
    return seconds + 0.12 * map_frames


@dataclass
class BudgetPlan:
    """The budget's bookkeeping: deadline and measured costs (the epochs are the LR plan's).

    ``origin`` is a ``time.perf_counter()`` value of this process's start; ``used_before_s``
    the wall time of earlier runs (resume).
    """

    budget_s: float
    origin: float
    used_before_s: float = 0.0
    finish_s: float = 0.0  # estimated export (+ map) time after the last epoch
    margin_s: float = 0.0
    epoch_s: float | None = None  # training epoch + checkpoint save (recent mean)
    val_s: float | None = None  # one validation, measured
    recent: list = field(default_factory=list)  # the last measured epochs

    def add_epoch(self, seconds: float) -> None:
        """Fold one measured epoch into ``epoch_s``: the mean of the last three.

        Tracks a shared machine's load as it changes, without letting one odd epoch decide.
        """
        self.recent = (self.recent + [float(seconds)])[-3:]
        self.epoch_s = sum(self.recent) / len(self.recent)

    def elapsed(self) -> float:
        """Wall time counted against the budget so far (this run and earlier ones)."""
        return self.used_before_s + (time.perf_counter() - self.origin)

    def left(self) -> float:
        """Seconds left for training (budget minus elapsed, export and margin)."""
        return self.budget_s - self.elapsed() - self.finish_s - self.margin_s

    def epochs_that_fit(self, completed: int, val_every: int) -> int:
        """Total epochs: ``completed`` plus as many as fit in :meth:`left` (at least 1 total)."""
        epoch_s = max(self.epoch_s or 0.0, 1e-3)
        val_s = self.val_s or 0.0
        left = self.left() - val_s  # the validation after the last epoch
        # n more epochs cost n * epoch_s + val_s * (validations among them, excl. the last)
        n = max(0, int(left // (epoch_s + val_s / max(1, val_every))))
        return max(1, completed + n)

    @property
    def deadline(self) -> float:
        """``time.perf_counter()`` value after which no training step should start."""
        return (self.origin + self.budget_s - self.used_before_s - self.finish_s
                - self.margin_s)

    def to_dict(self) -> dict:
        """What a checkpoint stores (wall time used so far and the measurements)."""
        return {'budget_s': self.budget_s, 'used_s': round(self.elapsed(), 3),
                'epoch_s': self.epoch_s, 'val_s': self.val_s}

    def resume_from(self, stored: dict | None, epochs_done: int, train_time_s: float,
                    history: list) -> None:
        """Count the wall time and measurements of the run(s) a resumed checkpoint continues.

        ``stored``: that checkpoint's budget; None when it ran without one.
        """
        if stored:
            self.used_before_s = float(stored.get('used_s', 0.0))
            self.epoch_s, self.val_s = stored.get('epoch_s'), stored.get('val_s')
        elif epochs_done:  # a run without a budget: its training time counts as used
            self.used_before_s = train_time_s
            times = [r['epoch_time_s'] for r in history if r.get('epoch_time_s')]
            self.epoch_s = float(np.median(times)) if times else None
        self.recent = [self.epoch_s] if self.epoch_s is not None else []


class BudgetController:
    """Fits the epoch count and the LR schedule to the budget, epoch after epoch.

    The training loop tells it what happened (:meth:`validated`, :meth:`end_epoch`,
    :meth:`saved`); it re-fits ``schedule`` (the cosine re-spread of
    :meth:`SchedulePlan.refit`) and logs the plan. ``dist``: a
    :class:`~posenet_ros.training.distributed.Distributed`; rank 0's clock decides for all.
    """

    def __init__(self, plan: BudgetPlan, schedule: SchedulePlan, *, val_every: int,
                 steps_per_epoch: int, warm: int, dist):
        self.plan = plan
        self.schedule = schedule
        self.val_every = int(val_every)
        self.steps_per_epoch = int(steps_per_epoch)
        self.warm = int(warm)
        self.dist = dist
        self.save_s = 0.0  # the last checkpoint save (part of an epoch's cost)

    @classmethod
    def from_config(cls, cfg, origin: float, n_frames: int, schedule: SchedulePlan, *,
                    steps_per_epoch: int, warm: int, dist) -> BudgetController | None:
        """The controller of ``cfg.time_budget`` (None without one), counted from ``origin``.

        ``n_frames``: frames of the scene map built after the export (``map: true``).
        """
        if not cfg.time_budget:
            return None
        n_map = n_frames if cfg.map else 0
        plan = BudgetPlan(parse_duration(cfg.time_budget), origin,
                          finish_s=(export_estimate_s(cfg.backbone, cfg.export_pt2, n_map)
                                    if cfg.export else 0.0))
        plan.margin_s = min(10.0, 0.02 * plan.budget_s)
        return cls(plan, schedule, val_every=cfg.val_every, steps_per_epoch=steps_per_epoch,
                   warm=warm, dist=dist)

    @property
    def measuring(self) -> bool:
        """No validation measured yet (the first epoch always validates)."""
        return self.plan.val_s is None

    @property
    def deadline(self) -> float:
        """See :attr:`BudgetPlan.deadline`."""
        return self.plan.deadline

    def begin(self, state, step: int) -> None:
        """Before the first epoch of this run: take a resumed checkpoint's plan and re-fit it.

        ``state``: the :class:`~posenet_ros.training.checkpoint.TrainState` resumed (or fresh);
        ``step``: scheduler steps taken so far.
        """
        plan = self.plan
        plan.resume_from(state.budget, state.epoch, state.train_time, state.history)
        if (state.budget or {}).get('epochs'):  # the stored LR plan and its anchor
            self.schedule.restore(state.budget)
        if plan.epoch_s is not None:  # resumed: re-fit from the measurements
            self._fit(state.epoch, step)
        if self.dist.main:
            log.info('time budget %s: %s used so far, ~%.0f s kept for the export%s',
                     format_duration(plan.budget_s), format_duration(plan.elapsed()),
                     plan.finish_s, f'; {self.schedule.epochs} epochs' if self.schedule.epochs
                     else '; the first epoch measures the speed')

    def _fit(self, completed: int, step: int) -> None:
        fit = self.plan.epochs_that_fit(completed, self.val_every)
        total = self.dist.broadcast_int(max(completed, fit, 1))
        if total != self.schedule.epochs:
            self.schedule.refit(total, step, self.warm, self.steps_per_epoch)

    def validated(self, seconds: float) -> None:
        """A validation took ``seconds``."""
        self.plan.val_s = seconds

    def saved(self, seconds: float) -> None:
        """The end-of-epoch checkpoint save took ``seconds`` (counted in the next epoch)."""
        self.save_s = seconds

    def end_epoch(self, completed: int, train_s: float, steps_done: int, cut: bool,
                  step: int) -> None:
        """Fold in an epoch that trained ``steps_done`` steps in ``train_s``; re-fit the plan.

        ``cut``: the deadline ended the epoch early, so training stops after it.
        """
        plan, schedule = self.plan, self.schedule
        if not cut:  # this epoch's cost: training (scaled up if resumed mid-epoch) and saving
            plan.add_epoch(train_s * self.steps_per_epoch / max(1, steps_done) + self.save_s)
        previous = schedule.epochs
        if cut:
            schedule.epochs = completed
        else:
            self._fit(completed, step)
        if not self.dist.main:
            return
        if cut:
            log.warning('time budget %s: out of time during epoch %d; stopping there',
                        format_duration(plan.budget_s), completed)
        elif previous is None:
            log.info('time budget %s: ~%d epochs of ~%.1f s (+ %.1f s per validation, '
                     'every %d), ~%.0f s for the export; the schedule runs over %d '
                     'epochs', format_duration(plan.budget_s), schedule.epochs,
                     plan.epoch_s, plan.val_s or 0.0, self.val_every, plan.finish_s,
                     schedule.epochs)
        elif schedule.epochs != previous:
            log.info('time budget: %s, %d epochs instead of %d (~%.1f s per epoch; the '
                     'rest of the schedule is spread over the new length)',
                     'running late' if schedule.epochs < previous else 'time to spare',
                     schedule.epochs, previous, plan.epoch_s)

    def state(self) -> dict:
        """The checkpoint's ``budget`` entry: wall time used, measurements, the LR plan."""
        return {**self.plan.to_dict(), **self.schedule.to_dict()}

    def report_export(self, seconds: float) -> None:
        """Log the export's time against its estimate."""
        log.info('export took %.1f s (estimated with the map: %.1f s)', seconds,
                 self.plan.finish_s)

    def report_end(self) -> None:
        """Log the wall time used."""
        log.info('time budget %s: %s used (this process and earlier runs)',
                 format_duration(self.plan.budget_s), format_duration(self.plan.elapsed()))
