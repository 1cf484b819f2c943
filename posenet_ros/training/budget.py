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
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field

from posenet_ros.core.errors import ConfigError

__all__ = ['parse_duration', 'format_duration', 'process_age_s', 'BudgetPlan',
           'export_estimate_s']

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
    """The budget's bookkeeping: deadline, measured costs, the fitted epoch count.

    ``origin`` is a ``time.perf_counter()`` value of this process's start; ``used_before_s``
    the wall time of earlier runs (resume).
    """

    budget_s: float
    origin: float
    used_before_s: float = 0.0
    finish_s: float = 0.0  # estimated export (+ map) time after the last epoch
    margin_s: float = 0.0
    epochs: int | None = None  # fitted total, None while measuring
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

    def to_dict(self) -> dict:
        """What a checkpoint stores (wall time used so far and the measurements)."""
        return {'budget_s': self.budget_s, 'used_s': round(self.elapsed(), 3),
                'epochs': self.epochs, 'epoch_s': self.epoch_s, 'val_s': self.val_s}
