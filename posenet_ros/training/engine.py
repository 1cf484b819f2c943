"""One epoch of training, one validation, and their records (torchvision's ``engine`` shape).

:func:`train_one_epoch` runs the optimiser steps of an epoch (from a given step, for resumes)
until the epoch ends, a signal asks to stop, or a time budget's deadline passes;
:func:`validate` gives the median errors on the validation frames; :func:`epoch_row`,
:func:`log_epoch` and :func:`write_metrics` turn an epoch into its ``metrics.csv`` row and log
line. :func:`stop_on_signal` makes Ctrl-C / SIGTERM a request the loop honours between steps.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from posenet_ros.core.atomic import atomic_path
from posenet_ros.core.errors import TrainingDivergedError
from posenet_ros.core.progress import progress
from posenet_ros.training.data import (
    TrainBatches,
    ValidationSet,
    center_crop_normalize,
    imagenet_stats,
)
from posenet_ros.training.distributed import Distributed
from posenet_ros.training.learner import Learner

__all__ = ['METRICS_COLUMNS', 'train_one_epoch', 'evaluate_cached', 'validate', 'epoch_row',
           'log_epoch', 'write_metrics', 'stop_on_signal']

log = logging.getLogger(__name__)

METRICS_COLUMNS = ('epoch', 'lr', 'loss', 'l_x', 'l_q', 's_x', 's_q', 'val_median_t_m',
                   'val_median_r_deg', 'epoch_time_s', 'images_per_s')


@contextlib.contextmanager
def stop_on_signal(enabled: bool = True):
    """First SIGINT/SIGTERM sets a flag (checked between steps); a second SIGINT aborts."""
    state = {'stop': False}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, frame):
        if state['stop'] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        state['stop'] = True
        log.warning('%s received: finishing the current step and saving a resumable last.pt '
                    '(press Ctrl-C again to abort without saving)', signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def train_one_epoch(learner: Learner, batches: TrainBatches, dist: Distributed, epoch: int, *,
                    first: int, sums: dict, stop: dict, deadline: float | None,
                    total_epochs: int | None, show_progress: bool, resume_hint: str
                    ) -> tuple[dict, int, bool]:
    """Steps ``first..steps-1`` of ``epoch``: returns ``(sums, steps_done, stopped)``.

    ``sums``: running sums of the loss parts (continued when resuming mid-epoch).
    ``stopped``: a signal asked to stop (after the returned number of steps of this epoch).
    Past ``deadline`` (``time.perf_counter()``, time budget) the epoch ends early, not stopped.
    Raises :class:`TrainingDivergedError` on a non-finite loss (``resume_hint``: where from).
    """
    order = batches.order(epoch)
    steps = batches.steps
    bar = progress(total=steps, initial=first, unit='step',
                   desc=f'epoch {epoch + 1}/{total_epochs or "?"}',
                   disable=not (show_progress and dist.main), every_frac=1.0, every_s=60.0,
                   final_line=False, logger=log)
    try:
        for step in range(first, steps):
            loss, parts = learner.step(*batches.get(order, step))
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            sums['n'] = sums.get('n', 0) + 1
            value = parts.get('loss', float(loss.detach()))
            stopping, diverged, late = dist.any(
                stop['stop'], not math.isfinite(value),
                deadline is not None and time.perf_counter() > deadline)
            bar.update(1)
            bar.set_postfix(loss=f'{value:.4f}')
            if diverged:
                raise TrainingDivergedError(
                    f'the loss became NaN/inf at epoch {epoch + 1} step {step + 1}; lower '
                    f'lr (now {learner.optimizer.defaults["lr"]:g}), enable grad_clip, or '
                    f'check the labels; resume from {resume_hint}')
            if stopping:
                return sums, step + 1, True
            if late and step + 1 < steps:
                if dist.main:
                    log.warning('time budget: ending epoch %d after %d of %d steps',
                                epoch + 1, step + 1, steps)
                return sums, step + 1, False
        return sums, steps, False
    finally:
        bar.close()


@torch.no_grad()
def evaluate_cached(net: nn.Module, images, positions: np.ndarray, quaternions: np.ndarray,
                    pos_mean, pos_scale: float, crop: int, device: torch.device,
                    batch_size: int = 64, amp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame ``(translation_m, rotation_deg)`` errors of ``net`` on cached images.

    Centre crops of the resized images (what the export does on full frames, up to uint8
    rounding of the cache); positions de-normalised with ``pos_mean``/``pos_scale``.
    """
    from posenet_ros.evaluation.metrics import frame_errors

    modes = {m: m.training for m in net.modules()}
    net.eval()
    mean, std = imagenet_stats(device)
    outs = []
    try:
        for start in range(0, len(images), batch_size):
            idx = list(range(start, min(len(images), start + batch_size)))
            frames = images.batch(idx).to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16,
                                enabled=amp and device.type == 'cuda'):
                raw = net(center_crop_normalize(frames, crop, mean, std))
            outs.append(raw.float().cpu())
    finally:
        for m, mode in modes.items():
            m.training = mode
    raw = torch.cat(outs).double().numpy()
    pred_p = raw[:, :3] * float(pos_scale) + np.asarray(pos_mean, dtype=np.float64)
    return frame_errors(pred_p, raw[:, 3:7], positions, quaternions)


def validate(learner: Learner, val: ValidationSet, pos_mean, pos_scale: float, crop: int,
             device: torch.device, batch_size: int) -> tuple[float, float]:
    """Median translation (m) and rotation (deg) error on the validation frames."""
    t_err, r_err = evaluate_cached(learner.net, val.images, val.positions, val.quaternions,
                                   pos_mean, pos_scale, crop, device, batch_size=batch_size,
                                   amp=learner.use_amp)
    return float(np.median(t_err)), float(np.median(r_err))


def epoch_row(learner: Learner, dist: Distributed, epoch: int, sums: dict, images: int,
              epoch_time: float) -> dict:
    """The ``metrics.csv`` row of ``epoch``: mean loss parts (over ranks), lr, throughput.

    ``images``: images this process trained on in the epoch.
    """
    n = max(1, sums.get('n', 1))
    row = {'epoch': epoch + 1, 'lr': learner.lr, 'epoch_time_s': round(epoch_time, 3),
           'images_per_s': round(images * dist.world_size / max(epoch_time, 1e-9), 2)}
    for k in ('loss', 'l_x', 'l_q', 's_x', 's_q'):
        if k in sums:
            row[k] = sums[k] / n
    if dist.enabled:  # report the mean over ranks
        keys = ('loss', 'l_x', 'l_q')
        row.update(zip(keys, dist.mean([row.get(k, 0.0) for k in keys])))
    return row


def log_epoch(row: dict, total: int, improved: bool) -> None:
    """The epoch's progress line (loss parts, s_x/s_q, throughput, validation medians)."""
    log.info('epoch %d/%d: loss %.4f (l_x %.4f, l_q %.4f)%s, %.1f img/s%s',
             row['epoch'], total, row.get('loss', math.nan),
             row.get('l_x', math.nan), row.get('l_q', math.nan),
             f', s_x {row["s_x"]:.3f} s_q {row["s_q"]:.3f}' if 's_x' in row else '',
             row['images_per_s'],
             f', val median {row["val_median_t_m"]:.3f} m '
             f'{row["val_median_r_deg"]:.2f} deg' + (' (best)' if improved else '')
             if 'val_median_t_m' in row else '')


def write_metrics(path: Path, rows: list[dict]) -> None:
    """``metrics.csv``: one row per epoch (replaced atomically)."""
    with atomic_path(path, keep_suffix=False) as tmp, \
            open(tmp, 'w', newline='', encoding='utf-8') as fh:
        writer = csv.DictWriter(fh, fieldnames=METRICS_COLUMNS, extrasaction='ignore')
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ('' if row.get(k) is None else row.get(k))
                             for k in METRICS_COLUMNS})
