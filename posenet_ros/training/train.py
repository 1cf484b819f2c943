"""``posenet-ros train``: train a PoseNet on a dataset, keep resumable checkpoints, export it.

One typed function, :func:`train`, and a thin CLI, :func:`main`. The same code runs on one
process (CPU or one GPU) and under ``torchrun`` with DistributedDataParallel (NCCL on GPUs,
gloo on CPUs; multi-GPU and multi-node)::

    posenet-ros train --config config/train_demo_cpu.yaml --dataset data/synth/dataset
    torchrun --nproc_per_node 4 -m posenet_ros.training.train --config my.yaml --device cuda

Pipeline: read the train split (any reader of ``posenet_ros.datasets``) and hold out the
validation frames (``val_split: holdout``, :mod:`posenet_ros.training.holdout`; or read a named val
split); normalise positions with the trained-on frames' mean and RMS radius (stored in the
export, which de-normalises); decode and resize every image once into a uint8 memmap cache
(``posenet_ros.training.image_cache``);
per step, random crop + colour jitter (``TrainAugment``), beta or
learned loss, optimiser + per-step LR schedule, AMP on CUDA; per epoch, validation (median
translation/rotation error on the val split, centre crops of the cached images), ``last.pt``
and ``best.pt`` (atomic), a row of ``metrics.csv``; at the end, the best model is exported
(TorchScript + ``.pt2``) with a training summary and the resolved config in its metadata.
``time_budget``: the epoch count and schedule are fitted to a wall-clock budget
(:mod:`posenet_ros.training.budget`). Layout as in torchvision's reference scripts: :func:`_setup`,
:func:`train_one_epoch`, :func:`validate`, :func:`checkpoint_state` / :func:`restore_state`,
:func:`_finish` (docs/training.md).

Reproducibility: the data order of epoch ``e`` is a permutation seeded by ``(seed, e)``
(``DistributedSampler``), the augmentation generator and the global torch RNG (dropout,
stochastic depth) are reseeded from ``(seed, e, rank)`` at the start of every epoch, and every
RNG state is also stored in checkpoints, so ``--resume`` continues exactly (also from a
checkpoint written mid-epoch by Ctrl-C). With ``deterministic: true``
(``torch.use_deterministic_algorithms``) N epochs and N/2 + resume + N/2 give identical weights.

Ctrl-C (SIGINT) or SIGTERM: the current step finishes, a resumable ``last.pt`` is saved, then
``KeyboardInterrupt`` propagates (exit code 130). A second Ctrl-C aborts at once; checkpoints
are replaced atomically, so the previous ``last.pt`` stays valid either way.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from posenet_ros.core.atomic import atomic_path
from posenet_ros.core.errors import (
    CheckpointError,
    ConfigError,
    EmptySplitError,
    TrainingDivergedError,
)
from posenet_ros.core.progress import progress
from posenet_ros.training.budget import (
    BudgetPlan,
    export_estimate_s,
    format_duration,
    parse_duration,
    process_age_s,
)
from posenet_ros.training.checkpoint import check_resumable, load_checkpoint, save_checkpoint
from posenet_ros.training.config import (
    HELP,
    RESUME_MAY_DIFFER,
    TrainConfig,
    config_keys,
    dump_yaml,
    load_config,
    resume_defaults,
)

__all__ = ['TrainResult', 'train', 'main', 'build_parser', 'evaluate_cached',
           'translation_normalization', 'METRICS_COLUMNS']

log = logging.getLogger('posenet_ros.training.train')

METRICS_COLUMNS = ('epoch', 'lr', 'loss', 'l_x', 'l_q', 's_x', 's_q', 'val_median_t_m',
                   'val_median_r_deg', 'epoch_time_s', 'images_per_s')


@dataclass
class TrainResult:
    """What :func:`train` produced (on ranks other than 0: only ``model``/``config``/``rank``)."""

    config: TrainConfig
    run_dir: Path
    model: nn.Module  # the network after the last epoch (CPU/GPU, eval mode)
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    export_ts: Path | None = None
    map_path: Path | None = None
    export_pt2: Path | None = None
    export_metadata: dict | None = None
    epochs: int = 0
    best_epoch: int | None = None
    val_median_translation_m: float | None = None
    val_median_rotation_deg: float | None = None
    train_time_s: float = 0.0
    images_per_s: float | None = None
    pos_mean: list = field(default_factory=lambda: [0.0, 0.0, 0.0])
    pos_scale: float = 1.0
    history: list = field(default_factory=list)
    rank: int = 0
    world_size: int = 1
    stopped_early: bool = False  # on_epoch_end ended training before cfg.epochs
    n_val: int = 0  # validation frames (holdout or val_split)
    selected_on: str | None = None  # split that chose the exported model; None: last epoch
    time_budget_s: float | None = None


# --- helpers -------------------------------------------------------------------------------
def translation_normalization(positions: np.ndarray) -> tuple[np.ndarray, float]:
    """``(mean (3,), scale)`` of training positions: centroid and RMS distance to it.

    The network regresses ``(p - mean) / scale`` (unit RMS radius), which keeps the position
    loss on the same footing for a 2 m room and a 100 m street. A degenerate split (all at one
    place) gets scale 1.
    """
    p = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    mean = p.mean(axis=0)
    scale = float(np.sqrt(np.mean(np.sum((p - mean) ** 2, axis=1))))
    return mean, (scale if scale > 1e-6 else 1.0)


def _derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (numpy SeedSequence)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


def _labels_fingerprint(samples) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(s.name.encode())
        h.update(np.round(np.concatenate([s.position, s.quaternion]), 6).tobytes())
    return h.hexdigest()[:16]


def _center_crop_normalize(frames: torch.Tensor, crop: int, mean: torch.Tensor,
                           std: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` -> normalised float ``(B, 3, crop, crop)`` (centre window)."""
    h, w = frames.shape[1], frames.shape[2]
    top, left = (h - crop) // 2, (w - crop) // 2
    x = frames[:, top:top + crop, left:left + crop].permute(0, 3, 1, 2).float() / 255.0
    return (x - mean) / std


class _TrainStep(nn.Module):
    """Network + loss in one module, so DDP all-reduces the learned loss's s_x/s_q too."""

    def __init__(self, net: nn.Module, loss: nn.Module):
        super().__init__()
        self.net = net
        self.loss = loss

    def forward(self, x: torch.Tensor, pos: torch.Tensor, quat: torch.Tensor):
        total = None
        parts: dict = {}
        for i, (weight, out) in enumerate(self.net.forward_train(x)):
            # the loss in float32 even under autocast
            value, p = self.loss(out.float(), pos, quat)
            total = weight * value if total is None else total + weight * value
            if i == 0:
                parts = p
        return total, parts


@contextlib.contextmanager
def _stop_on_signal(enabled: bool):
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


@dataclass
class _Dist:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.enabled:
            dist.barrier()


def _resolve_device(cfg: TrainConfig, local_rank: int, distributed: bool) -> torch.device:
    from posenet_ros.model.relocalizer import resolve_device

    device = resolve_device(cfg.device)
    if device.type == 'cuda' and distributed and cfg.device in ('auto', 'cuda'):
        device = torch.device('cuda', local_rank)  # one GPU per process under torchrun
    return device


def _init_distributed(cfg: TrainConfig) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        return _Dist(), _resolve_device(cfg, 0, False)
    try:
        int(os.environ['RANK'])
        local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    except (KeyError, ValueError):
        raise ConfigError('WORLD_SIZE > 1 but RANK/LOCAL_RANK are not set: launch distributed '
                          'training with torchrun (it sets them)') from None
    device = _resolve_device(cfg, local_rank, True)
    owns = False
    if not dist.is_initialized():
        if device.type == 'cuda':
            torch.cuda.set_device(device)
        dist.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo')
        owns = True
    return _Dist(dist.get_world_size(), dist.get_rank(), local_rank, owns), device


@dataclass
class _SchedulePlan:
    """The epoch count the LR schedule spans; ``None`` while a time budget is being measured.

    A mutable holder read by :func:`_lr_lambda` at every step, so the time budget can fit and
    re-fit the schedule (not a callable object: LambdaLR would pickle its attributes). A
    re-fit at step ``anchor_step`` keeps the cosine's progress there (``anchor_frac``) and
    spreads the rest over the new length: the learning rate stays continuous and still ends
    at its floor. Without a re-fit (no time budget) this is the plain cosine over ``epochs``.
    """

    epochs: int | None
    anchor_step: int | None = None
    anchor_frac: float = 0.0

    def frac(self, step: int, warm: int, steps_per_epoch: int) -> float:
        """Cosine progress in [0, 1] at ``step`` (after warm-up)."""
        total = max(1, self.epochs * steps_per_epoch)
        if self.anchor_step is None or self.anchor_step <= warm and self.anchor_frac == 0.0:
            return min(1.0, (step - warm) / max(1, total - warm))
        s0 = max(self.anchor_step, warm)
        return min(1.0, self.anchor_frac + (1.0 - self.anchor_frac) * (step - s0)
                   / max(1, total - s0))

    def refit(self, epochs: int, step: int, warm: int, steps_per_epoch: int) -> None:
        """Span ``epochs`` from now on (``step``: scheduler steps taken so far)."""
        frac = (0.0 if self.epochs is None or step <= warm
                else self.frac(step, warm, steps_per_epoch))
        self.epochs, self.anchor_step, self.anchor_frac = int(epochs), int(step), float(frac)

    def to_dict(self) -> dict:
        """What a checkpoint stores."""
        return {'epochs': self.epochs, 'anchor_step': self.anchor_step,
                'anchor_frac': self.anchor_frac}


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int, plan: _SchedulePlan | None = None):
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    plan = _SchedulePlan(cfg.epochs) if plan is None else plan

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == 'cosine':
            if plan.epochs is None:  # the time budget's measuring epoch: peak rate
                return 1.0
            frac = plan.frac(step, warm, steps_per_epoch)
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(
                math.pi * frac))
        if cfg.schedule == 'step':
            return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_epochs)
        return 1.0

    return factor


def _build_optimizer(cfg: TrainConfig, net: nn.Module, loss: nn.Module):
    # The learned loss weights s_x/s_q get their own group: no weight decay (it would pull them
    # towards 0) and their own lr (Adam moves a parameter by about lr per step, so with the
    # network's lr they could barely leave their start values).
    groups = [{'params': [p for p in net.parameters() if p.requires_grad],
               'weight_decay': cfg.weight_decay}]
    loss_params = [p for p in loss.parameters() if p.requires_grad]
    if loss_params:
        groups.append({'params': loss_params, 'weight_decay': 0.0,
                       'lr': cfg.lr if cfg.loss_lr is None else cfg.loss_lr})
    if cfg.optimizer == 'adam':
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == 'adamw':
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def _quat_reference(cfg: TrainConfig, train_samples) -> np.ndarray | None:
    """Reference rotation (wxyz) whose hemisphere the labels are put in, or None (canonical)."""
    if cfg.quat_hemisphere != 'reference':
        return None
    from posenet_ros.core.geometry import mean_quaternion

    return mean_quaternion(np.stack([s.quaternion for s in train_samples]))


def _rng_state(aug_gen: torch.Generator) -> dict:
    _, key, pos, has_gauss, gauss = np.random.get_state()
    state = {'torch': torch.get_rng_state(), 'aug': aug_gen.get_state(),
             'python': list(random.getstate()[1]),
             'numpy': {'key': torch.from_numpy(key.astype(np.int64)), 'pos': int(pos),
                       'has_gauss': int(has_gauss), 'gauss': float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, aug_gen: torch.Generator) -> None:
    torch.set_rng_state(state['torch'])
    aug_gen.set_state(state['aug'])
    random.setstate((3, tuple(int(v) for v in state['python']), None))
    npy = state['numpy']
    np.random.set_state(('MT19937', npy['key'].numpy().astype(np.uint32), npy['pos'],
                         npy['has_gauss'], npy['gauss']))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _seed_epoch(seed: int, epoch: int, rank: int, aug_gen: torch.Generator) -> None:
    aug_gen.manual_seed(_derived_seed(seed, epoch, rank, 1))
    torch.manual_seed(_derived_seed(seed, epoch, rank, 2))  # dropout, stochastic depth (+CUDA)


def _dataset_frames(cfg: TrainConfig) -> tuple[str, str]:
    map_frame, camera_frame = cfg.map_frame, cfg.camera_frame
    if map_frame is None or camera_frame is None:
        try:
            from posenet_ros.datasets.manifest import is_manifest, read_manifest_info

            frames = (read_manifest_info(cfg.dataset).get('frames', {})
                      if is_manifest(cfg.dataset) else {})
        except Exception:  # noqa: BLE001 - informational only
            frames = {}
        map_frame = map_frame or frames.get('map_frame') or 'map'
        camera_frame = camera_frame or frames.get('camera_frame') or 'camera_optical'
    return map_frame, camera_frame


@torch.no_grad()
def evaluate_cached(net: nn.Module, images, positions: np.ndarray, quaternions: np.ndarray,
                    pos_mean, pos_scale: float, crop: int, device: torch.device,
                    batch_size: int = 64, amp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame ``(translation_m, rotation_deg)`` errors of ``net`` on cached images.

    Centre crops of the resized images (what the export does on full frames, up to uint8
    rounding of the cache); positions de-normalised with ``pos_mean``/``pos_scale``.
    """
    from posenet_ros.evaluation.metrics import frame_errors
    from posenet_ros.model.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    modes = {m: m.training for m in net.modules()}
    net.eval()
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    outs = []
    try:
        for start in range(0, len(images), batch_size):
            idx = list(range(start, min(len(images), start + batch_size)))
            frames = images.batch(idx).to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16,
                                enabled=amp and device.type == 'cuda'):
                raw = net(_center_crop_normalize(frames, crop, mean, std))
            outs.append(raw.float().cpu())
    finally:
        for m, mode in modes.items():
            m.training = mode
    raw = torch.cat(outs).double().numpy()
    pred_p = raw[:, :3] * float(pos_scale) + np.asarray(pos_mean, dtype=np.float64)
    return frame_errors(pred_p, raw[:, 3:7], positions, quaternions)


def _metric_of(best_metric: str, med_t: float, med_r: float) -> float:
    return med_t if best_metric == 'translation' else med_r


def _write_metrics(path: Path, rows: list[dict]) -> None:
    with atomic_path(path, keep_suffix=False) as tmp, \
            open(tmp, 'w', newline='', encoding='utf-8') as fh:
        writer = csv.DictWriter(fh, fieldnames=METRICS_COLUMNS, extrasaction='ignore')
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ('' if row.get(k) is None else row.get(k))
                             for k in METRICS_COLUMNS})


def _load_split(cfg: TrainConfig, split: str, role: str):
    from posenet_ros.datasets import load_dataset

    try:
        return load_dataset(cfg.dataset, split, kind=cfg.dataset_kind)
    except EmptySplitError as exc:
        key = 'val_split' if role == 'val' else 'train_split'
        extra = ' or set val_split: null to train without validation' if role == 'val' else ''
        raise EmptySplitError(f'{exc} (config {key}={split!r}{extra})') from None


def _images(cfg: TrainConfig, samples, cache_dir: Path, ddp: _Dist, desc: str):
    from posenet_ros.training.image_cache import LazyImages, build_image_cache

    if not cfg.cache:
        return LazyImages(samples, cfg.resize)
    # One builder per machine (LOCAL_RANK 0); the others wait and then open the finished file.
    if ddp.local_rank == 0:
        images = build_image_cache(samples, cfg.resize, cache_dir,
                                   progress=cfg.progress and ddp.main, desc=desc)
    ddp.barrier()
    if ddp.local_rank != 0:
        images = build_image_cache(samples, cfg.resize, cache_dir, progress=False, desc=desc)
    return images


# --- the trainer ---------------------------------------------------------------------------
def train(cfg: TrainConfig, on_epoch_end=None, *, started_at: float | None = None
          ) -> TrainResult:
    """Train (or resume) according to ``cfg``; export the best model; return a summary.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this; only rank 0 logs,
    validates, writes checkpoints/metrics and exports. Raises :class:`ConfigError`,
    :class:`~posenet_ros.core.errors.DatasetError`, :class:`CheckpointError`,
    :class:`TrainingDivergedError`; ``KeyboardInterrupt`` after saving a resumable checkpoint.

    ``on_epoch_end(row: dict) -> bool``, called on rank 0 after each epoch's checkpoint with that
    epoch's metrics row: returning True stops training there (early stopping; ``last.pt`` is
    resumable, the best model is still exported).

    ``started_at``: ``time.perf_counter()`` value the ``time_budget`` counts from (the CLI
    passes its process start); default: now.
    """
    t_origin = time.perf_counter() if started_at is None else started_at
    cfg = cfg.validate()
    if not cfg.dataset:
        raise ConfigError('no dataset given: pass --dataset PATH (a dataset folder or bag) or '
                          'set dataset: in the YAML config')
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    ddp, device = _init_distributed(cfg)
    file_handler = None
    try:
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        if cfg.deterministic:
            os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
        run_dir = Path(cfg.run_dir)
        if ddp.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(run_dir / 'train.log', encoding='utf-8')
            file_handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
            log.addHandler(file_handler)
            if log.getEffectiveLevel() > logging.INFO:
                log.setLevel(logging.INFO)
        return _train(cfg, ddp, device, run_dir, on_epoch_end, t_origin)
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)
        if file_handler is not None:
            log.removeHandler(file_handler)
            file_handler.close()
        if ddp.owns_group and dist.is_initialized():
            dist.destroy_process_group()


# --- the training state and its pieces (torchvision-reference shape) ------------------------
@dataclass
class _Run:
    """Everything built once before the epoch loop (data, model, optimiser, schedule)."""

    cfg: TrainConfig
    ddp: _Dist
    device: torch.device
    run_dir: Path
    train_samples: list
    val_samples: list
    fingerprint: str
    pos_mean: np.ndarray
    pos_scale: float
    train_images: object
    val_images: object
    pos_t: torch.Tensor
    quat_t: torch.Tensor
    val_p: np.ndarray | None
    val_q: np.ndarray | None
    net: nn.Module
    loss_fn: nn.Module
    step_module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    aug_gen: torch.Generator
    augment: nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    sampler: object
    steps: int
    batch: int
    use_amp: bool
    plan: _SchedulePlan
    flag: torch.Tensor  # [stop requested, non-finite loss / early stop, past the deadline]

    @property
    def last_path(self) -> Path:
        return self.run_dir / 'last.pt'

    @property
    def best_path(self) -> Path:
        return self.run_dir / 'best.pt'


@dataclass
class TrainState:
    """Progress a checkpoint carries besides the model/optimiser/scheduler states."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed steps of epoch ``epoch`` (non-zero only mid-epoch)
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {'epoch': None, 'metric': math.inf,
                                                'median_t': None, 'median_r': None})
    train_time: float = 0.0
    partial: dict | None = None  # loss sums of the interrupted epoch
    rng: list | None = None  # per-rank RNG states of a mid-epoch checkpoint
    budget: dict | None = None  # BudgetPlan.to_dict() of the run that wrote it


def checkpoint_state(run: _Run, st: TrainState, partial_sums: dict | None = None,
                     budget: dict | None = None) -> dict:
    """The resumable checkpoint dict (collective under DDP: every rank's RNG state)."""
    rng = _rng_state(run.aug_gen)
    if run.ddp.enabled:  # every rank's RNG state, so a mid-epoch resume is exact on all ranks
        gathered: list = [None] * run.ddp.world_size
        dist.all_gather_object(gathered, rng)
        rng = gathered
    else:
        rng = [rng]
    return {'config': run.cfg.to_dict(), 'backbone': run.cfg.backbone,
            'model': run.net.state_dict(), 'loss': run.loss_fn.state_dict(),
            'optimizer': run.optimizer.state_dict(), 'scheduler': run.scheduler.state_dict(),
            'scaler': run.scaler.state_dict(), 'epoch': st.epoch, 'step': st.step, 'rng': rng,
            'world_size': run.ddp.world_size, 'best': st.best, 'history': st.history,
            'pos_mean': [float(v) for v in run.pos_mean], 'pos_scale': float(run.pos_scale),
            'train_fingerprint': run.fingerprint, 'train_time_s': st.train_time,
            'partial': partial_sums, 'budget': budget, 'n_val': len(run.val_samples)}


def restore_state(run: _Run, ckpt: dict) -> TrainState:
    """Load a checkpoint's states into ``run``; return its progress."""
    run.net.load_state_dict(ckpt['model'])
    run.loss_fn.load_state_dict(ckpt['loss'])
    run.optimizer.load_state_dict(ckpt['optimizer'])
    run.scheduler.load_state_dict(ckpt['scheduler'])
    run.scaler.load_state_dict(ckpt['scaler'])
    st = TrainState(epoch=int(ckpt['epoch']), step=int(ckpt['step']),
                    history=list(ckpt.get('history', [])),
                    train_time=float(ckpt.get('train_time_s', 0.0)),
                    partial=ckpt.get('partial'), rng=ckpt.get('rng') or [],
                    budget=ckpt.get('budget'))
    st.best = dict(ckpt.get('best', st.best))
    if st.step and len(st.rng) != run.ddp.world_size:
        raise CheckpointError(
            f'{run.cfg.resume}: written mid-epoch by {len(st.rng)} process(es), resumed by '
            f'{run.ddp.world_size}; resume with the same number of processes')
    return st


def train_one_epoch(run: _Run, epoch: int, first: int, sums: dict, stop: dict,
                    deadline: float | None = None, total_epochs: int | None = None
                    ) -> tuple[dict, int, bool]:
    """Steps ``first..steps-1`` of ``epoch``: returns ``(sums, steps_done, stopped)``.

    ``stopped``: a signal asked to stop (after the returned number of steps of this epoch).
    Past ``deadline`` (``time.perf_counter()``, time budget) the epoch ends early, not stopped.
    Raises :class:`TrainingDivergedError` on a non-finite loss.
    """
    cfg, ddp, device, flag = run.cfg, run.ddp, run.device, run.flag
    run.sampler.set_epoch(epoch)  # data order = permutation seeded by (seed, epoch)
    order = list(run.sampler)
    batch, steps = run.batch, run.steps
    bar = progress(total=steps, initial=first, unit='step',
                   desc=f'epoch {epoch + 1}/{total_epochs or "?"}',
                   disable=not (cfg.progress and ddp.main), every_frac=1.0, every_s=60.0,
                   final_line=False, logger=log)
    step = first
    try:
        for step in range(first, steps):
            idx = order[step * batch:(step + 1) * batch]
            frames = run.train_images.batch(idx)
            if device.type == 'cuda':
                frames = frames.pin_memory()
            frames = frames.to(device, non_blocking=True)
            with torch.no_grad():
                x = (run.augment(frames) if cfg.augment
                     else _center_crop_normalize(frames, cfg.crop, run.mean, run.std))
            pos = run.pos_t[idx].to(device, non_blocking=True)
            quat = run.quat_t[idx].to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16,
                                enabled=run.use_amp):
                loss, parts = run.step_module(x, pos, quat)
            run.optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                run.scaler.unscale_(run.optimizer)
                nn.utils.clip_grad_norm_(run.step_module.parameters(), cfg.grad_clip)
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.scheduler.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            sums['n'] = sums.get('n', 0) + 1
            flag[0] = float(stop['stop'])
            flag[1] = float(not math.isfinite(parts.get('loss', float(loss.detach()))))
            flag[2] = float(deadline is not None and time.perf_counter() > deadline)
            if ddp.enabled:
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            bar.update(1)
            bar.set_postfix(loss=f'{parts.get("loss", float(loss.detach())):.4f}')
            if flag[1] > 0:
                raise TrainingDivergedError(
                    f'the loss became NaN/inf at epoch {epoch + 1} step {step + 1}; lower '
                    f'lr (now {cfg.lr:g}), enable grad_clip, or check the labels; resume '
                    f'from {run.last_path if run.last_path.exists() else "scratch"}')
            if flag[0] > 0:
                return sums, step + 1, True
            if flag[2] > 0 and step + 1 < steps:
                if ddp.main:
                    log.warning('time budget: ending epoch %d after %d of %d steps',
                                epoch + 1, step + 1, steps)
                return sums, step + 1, False
        return sums, steps, False
    finally:
        bar.close()


def validate(run: _Run) -> tuple[float, float]:
    """Median translation (m) and rotation (deg) error on the validation frames."""
    t_err, r_err = evaluate_cached(run.net, run.val_images, run.val_p, run.val_q, run.pos_mean,
                                   run.pos_scale, run.cfg.crop, run.device,
                                   batch_size=2 * run.batch, amp=run.use_amp)
    return float(np.median(t_err)), float(np.median(r_err))


def _epoch_row(run: _Run, epoch: int, sums: dict, n_steps: int, epoch_time: float) -> dict:
    ddp = run.ddp
    n = max(1, sums.get('n', 1))
    row = {'epoch': epoch + 1, 'lr': run.optimizer.param_groups[0]['lr'],
           'epoch_time_s': round(epoch_time, 3),
           'images_per_s': round(n_steps * run.batch * ddp.world_size
                                 / max(epoch_time, 1e-9), 2)}
    for k in ('loss', 'l_x', 'l_q', 's_x', 's_q'):
        if k in sums:
            row[k] = sums[k] / n
    if ddp.enabled:  # report the mean over ranks
        vals = torch.tensor([row.get(k, 0.0) for k in ('loss', 'l_x', 'l_q')],
                            dtype=torch.float64, device=run.flag.device)
        dist.all_reduce(vals)
        for k, v in zip(('loss', 'l_x', 'l_q'), (vals / ddp.world_size).tolist()):
            row[k] = v
    return row


def _log_epoch(row: dict, total: int, improved: bool) -> None:
    log.info('epoch %d/%d: loss %.4f (l_x %.4f, l_q %.4f)%s, %.1f img/s%s',
             row['epoch'], total, row.get('loss', math.nan),
             row.get('l_x', math.nan), row.get('l_q', math.nan),
             f', s_x {row["s_x"]:.3f} s_q {row["s_q"]:.3f}' if 's_x' in row else '',
             row['images_per_s'],
             f', val median {row["val_median_t_m"]:.3f} m '
             f'{row["val_median_r_deg"]:.2f} deg' + (' (best)' if improved else '')
             if 'val_median_t_m' in row else '')


def _validate_into(run: _Run, st: TrainState, row: dict, budget: BudgetPlan | None) -> bool:
    """Validate (rank 0), add the medians to ``row``; True when this is the best model so far."""
    t0 = time.perf_counter()
    med_t, med_r = validate(run)
    if budget is not None:
        budget.val_s = time.perf_counter() - t0
    row['val_median_t_m'], row['val_median_r_deg'] = med_t, med_r
    metric = _metric_of(run.cfg.best_metric, med_t, med_r)
    if metric < st.best['metric']:
        st.best = {'epoch': row['epoch'], 'metric': metric, 'median_t': med_t,
                   'median_r': med_r}
        return True
    return False


def _broadcast_int(value: int, run: _Run) -> int:
    """Rank 0's ``value`` on every rank (plans made from rank 0's clock)."""
    if not run.ddp.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=run.flag.device)
    dist.broadcast(t, 0)
    return int(t.item())


def _load_data(cfg: TrainConfig, main: bool) -> tuple[list, list]:
    """``(train, val)`` samples: the train split minus a holdout, or a named val split."""
    samples = _load_split(cfg, cfg.train_split, 'train')
    if cfg.val_split == 'holdout':
        from posenet_ros.training.holdout import holdout_split

        train_samples, val_samples = holdout_split(samples, cfg.val_fraction, cfg.val_segment)
        if main:
            log.info('validation: %d of %d %s frames held out (val_fraction %g, segments of '
                     'up to %d frames); the test split is not read', len(val_samples),
                     len(samples), cfg.train_split, cfg.val_fraction, cfg.val_segment)
        return train_samples, val_samples
    if cfg.val_split:
        return samples, _load_split(cfg, cfg.val_split, 'val')
    return samples, []


def _setup(cfg: TrainConfig, ddp: _Dist, device: torch.device, run_dir: Path,
           ckpt: dict | None) -> _Run:
    """Data, caches, model, loss, optimiser and schedule (not yet restored from ``ckpt``)."""
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DistributedSampler

    from posenet_ros.model.network import build_posenet
    from posenet_ros.model.preprocessing import IMAGENET_MEAN, IMAGENET_STD, TrainAugment
    from posenet_ros.training.losses import build_loss

    main = ddp.main
    train_samples, val_samples = _load_data(cfg, main)
    fingerprint = _labels_fingerprint(train_samples)
    positions = np.stack([s.position for s in train_samples])
    quats = np.stack([s.quaternion for s in train_samples])
    # Labels are canonical (w >= 0), which has a seam where views cross w = 0; 'reference' puts
    # them in the hemisphere of the training labels' mean rotation (the loss flips them).
    quat_ref = _quat_reference(cfg, train_samples)
    if main and quat_ref is not None:
        log.info('rotation labels in the hemisphere of their mean rotation %s (wxyz)',
                 np.round(quat_ref, 4).tolist())
    if ckpt is not None:
        if ckpt.get('train_fingerprint') != fingerprint:
            raise CheckpointError(
                f'cannot resume: the training split of {cfg.dataset} differs from the one the '
                'checkpoint was trained on (other images or poses); resume with the original '
                'dataset or start a new run without --resume')
        pos_mean, pos_scale = np.asarray(ckpt['pos_mean'], dtype=np.float64), ckpt['pos_scale']
    elif cfg.normalize_translation:
        # from the frames actually trained on (a holdout is not part of them)
        pos_mean, pos_scale = translation_normalization(positions)
    else:
        pos_mean, pos_scale = np.zeros(3), 1.0
    if main:
        log.info('data: %d train (%s), %d val (%s) samples from %s; position mean %s, scale '
                 '%.4g m', len(train_samples), cfg.train_split, len(val_samples), cfg.val_split,
                 cfg.dataset, np.round(pos_mean, 4).tolist(), pos_scale)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else run_dir.parent / 'image_cache'
    train_images = _images(cfg, train_samples, cache_dir, ddp, 'cache train images')
    val_images = None
    if val_samples and main:  # only rank 0 validates; no barrier here
        val_images = _images(cfg, val_samples, cache_dir, _Dist(), 'cache val images')
    h, w = train_images.size
    if min(h, w) < cfg.crop:
        raise ConfigError(f'crop {cfg.crop} does not fit the resized images ({h}x{w}); '
                          'lower crop or raise resize')
    pos_t = torch.from_numpy((positions - pos_mean) / pos_scale).float()
    quat_t = torch.from_numpy(quats).float()
    val_p = np.stack([s.position for s in val_samples]) if val_samples else None
    val_q = np.stack([s.quaternion for s in val_samples]) if val_samples else None

    torch.manual_seed(cfg.seed)  # same head initialisation on every rank
    net = build_posenet(cfg.backbone, cfg.pretrained, cfg.dropout).to(device)
    # beta is in the paper's units (metres vs quaternion); on positions divided by pos_scale
    # the same balance needs beta / pos_scale.
    loss_fn = build_loss(cfg.loss, cfg.beta / pos_scale, cfg.s_x_init, cfg.s_q_init,
                         quat_loss=cfg.quat_loss, quat_ref=quat_ref).to(device)
    step_module: nn.Module = _TrainStep(net, loss_fn)
    optimizer = _build_optimizer(cfg, net, loss_fn)
    sampler = DistributedSampler(range(len(train_samples)), num_replicas=ddp.world_size,
                                 rank=ddp.rank, shuffle=True, seed=cfg.seed, drop_last=False)
    per_rank = len(sampler)
    batch = min(cfg.batch_size, per_rank)
    steps = max(1, per_rank // batch)  # drop the last incomplete batch (BatchNorm of size 1)
    plan = _SchedulePlan(None if cfg.time_budget else cfg.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, steps, plan))
    use_amp = cfg.amp and device.type == 'cuda'
    aug_gen = torch.Generator()
    run = _Run(
        cfg=cfg, ddp=ddp, device=device, run_dir=run_dir, train_samples=train_samples,
        val_samples=val_samples, fingerprint=fingerprint, pos_mean=pos_mean,
        pos_scale=float(pos_scale), train_images=train_images, val_images=val_images,
        pos_t=pos_t, quat_t=quat_t, val_p=val_p, val_q=val_q, net=net, loss_fn=loss_fn,
        step_module=step_module, optimizer=optimizer, scheduler=scheduler,
        scaler=torch.amp.GradScaler('cuda', enabled=use_amp), aug_gen=aug_gen,
        augment=TrainAugment(cfg.crop, IMAGENET_MEAN, IMAGENET_STD, cfg.brightness,
                             cfg.contrast, cfg.saturation, generator=aug_gen).to(device),
        mean=torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
        std=torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1),
        sampler=sampler, steps=steps, batch=batch, use_amp=use_amp, plan=plan,
        flag=torch.zeros(3, device=device if ddp.enabled else 'cpu'))
    if ddp.enabled:
        run.step_module = DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == 'cuda' else None)
    if main:
        n_params = sum(p.numel() for p in net.parameters())
        log.info('model %s (%.1fM parameters, pretrained=%s), loss %s, %s lr %.3g %s '
                 'schedule, %d steps/epoch of %d x %d process(es), crop %d from %dx%d',
                 cfg.backbone, n_params / 1e6, cfg.pretrained, cfg.loss, cfg.optimizer, cfg.lr,
                 cfg.schedule, steps, batch, ddp.world_size, cfg.crop, h, w)
    return run


def _read_resume(cfg: TrainConfig, run_dir: Path, main: bool) -> dict | None:
    """The checkpoint to resume from, checked against ``cfg`` (before any expensive work)."""
    last_path = run_dir / 'last.pt'
    if not cfg.resume:
        if last_path.exists():
            raise ConfigError(f'{run_dir} already holds last.pt from an earlier run: pass '
                              '--resume to continue it, choose another --run-dir, or delete '
                              'the folder')
        return None
    resume_path = last_path if cfg.resume == 'auto' else Path(cfg.resume)
    ckpt = load_checkpoint(resume_path)
    # a key missing from an older checkpoint did not exist yet: it ran with the default
    for key, value in resume_defaults().items():
        ckpt.setdefault('config', {}).setdefault(key, value)
    check_resumable(ckpt, cfg.to_dict(), resume_path, RESUME_MAY_DIFFER)
    if ckpt['config'].get('epochs') != cfg.epochs and main and not cfg.time_budget:
        log.warning('resuming with epochs=%d (checkpoint: %s): the LR schedule is '
                    'recomputed for the new length', cfg.epochs, ckpt['config'].get('epochs'))
    return ckpt


def _make_budget(cfg: TrainConfig, t_origin: float, st: TrainState, run: _Run
                 ) -> BudgetPlan | None:
    if not cfg.time_budget:
        return None
    n_map = len(run.train_samples) + len(run.val_samples) if cfg.map else 0
    budget = BudgetPlan(parse_duration(cfg.time_budget), t_origin,
                        finish_s=(export_estimate_s(cfg.backbone, cfg.export_pt2, n_map)
                                  if cfg.export else 0.0))
    budget.margin_s = min(10.0, 0.02 * budget.budget_s)
    if st.budget:  # resumed: the budget counts the wall time of the earlier run(s)
        budget.used_before_s = float(st.budget.get('used_s', 0.0))
        budget.epoch_s, budget.val_s = st.budget.get('epoch_s'), st.budget.get('val_s')
        budget.recent = [budget.epoch_s] if budget.epoch_s is not None else []
    elif st.epoch:  # resumed from a run without a budget: count its training time
        budget.used_before_s = st.train_time
        times = [r['epoch_time_s'] for r in st.history if r.get('epoch_time_s')]
        budget.epoch_s = float(np.median(times)) if times else None
        budget.recent = [budget.epoch_s] if budget.epoch_s is not None else []
    return budget


def _budget_state(run: _Run, budget: BudgetPlan | None) -> dict | None:
    return None if budget is None else {**budget.to_dict(), **run.plan.to_dict()}


def _fit_budget(run: _Run, budget: BudgetPlan, completed: int) -> int:
    """Re-fit the schedule to the budget (rank 0's clock decides); return the total epochs."""
    total = _broadcast_int(max(completed, budget.epochs_that_fit(completed, run.cfg.val_every),
                               1), run)
    if total != run.plan.epochs:
        warm = int(round(run.cfg.warmup_epochs * run.steps))
        run.plan.refit(total, run.scheduler.last_epoch, warm, run.steps)
    budget.epochs = total
    return total


def _train(cfg: TrainConfig, ddp: _Dist, device: torch.device, run_dir: Path,
           on_epoch_end, t_origin: float) -> TrainResult:
    main = ddp.main
    ckpt = _read_resume(cfg, run_dir, main)
    if main:
        log.info('resolved config:\n%s', dump_yaml(cfg).rstrip())
        (run_dir / 'config.yaml').write_text(dump_yaml(cfg), encoding='utf-8')
        log.info('device %s, %d process(es), torch %s', device, ddp.world_size,
                 torch.__version__)
    run = _setup(cfg, ddp, device, run_dir, ckpt)
    st = TrainState()
    if ckpt is not None:
        st = restore_state(run, ckpt)
        if main:
            log.info('resumed from %s at epoch %d step %d', cfg.resume, st.epoch, st.step)
    net, plan = run.net, run.plan
    budget = _make_budget(cfg, t_origin, st, run)
    if budget is not None and (st.budget or {}).get('epochs'):  # resumed: the stored plan
        plan.epochs = int(st.budget['epochs'])
        plan.anchor_step = st.budget.get('anchor_step')
        plan.anchor_frac = float(st.budget.get('anchor_frac') or 0.0)
    if budget is not None and budget.epoch_s is not None:  # resumed: re-fit from measurements
        _fit_budget(run, budget, st.epoch)
    if budget is not None and main:
        log.info('time budget %s: %s used so far, ~%.0f s kept for the export%s',
                 format_duration(budget.budget_s), format_duration(budget.elapsed()),
                 budget.finish_s, f'; {plan.epochs} epochs' if plan.epochs else
                 '; the first epoch measures the speed')

    net.train()
    if cfg.freeze_bn:
        # BatchNorm in inference mode: normalised with the pretrained running statistics, which
        # stay fixed (no batch statistics of a few near-identical frames; what is trained is
        # also what the export computes). evaluate_cached restores these per-module modes.
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    start_epoch, start_step = st.epoch, st.step
    stopped_early = False
    budget_save_s = 0.0  # the last checkpoint save (part of an epoch's cost)
    with _stop_on_signal(True) as stop:
        if main and (plan.epochs is None or start_epoch < plan.epochs):
            log.info('training epochs %d..%s (Ctrl-C saves a resumable last.pt)',
                     start_epoch + 1, plan.epochs or '(fitted to the time budget)')
        epoch = start_epoch
        while plan.epochs is None or epoch < plan.epochs:
            resuming_mid = epoch == start_epoch and start_step > 0
            if resuming_mid:
                _set_rng_state(st.rng[ddp.rank], run.aug_gen)
                sums = dict(st.partial or {})
            else:
                _seed_epoch(cfg.seed, epoch, ddp.rank, run.aug_gen)
                sums = {}
            first = start_step if resuming_mid else 0
            deadline = (budget.origin + budget.budget_s - budget.used_before_s
                        - budget.finish_s - budget.margin_s) if budget else None
            t0 = time.perf_counter()
            sums, done, stopped = train_one_epoch(run, epoch, first, sums, stop, deadline,
                                                  plan.epochs)
            train_s = time.perf_counter() - t0
            st.train_time += train_s
            if stopped:
                st.epoch, st.step = epoch, done
                ck = checkpoint_state(run, st, sums, _budget_state(run, budget))
                if main:
                    save_checkpoint(run.last_path, ck)
                    log.warning('interrupted: saved %s (epoch %d, step %d); continue with '
                                '--resume %s', run.last_path, epoch + 1, done, run.last_path)
                raise KeyboardInterrupt
            cut = done < run.steps  # the time budget ended this epoch early
            row = _epoch_row(run, epoch, sums, done - first, train_s)
            completed = epoch + 1
            can_validate = main and run.val_images is not None
            measuring = budget is not None and budget.val_s is None
            improved = validated = False
            if can_validate and ((completed % cfg.val_every == 0) or completed == plan.epochs
                                 or cut or measuring):
                improved, validated = _validate_into(run, st, row, budget), True
            if budget is not None:
                if not cut:  # this epoch's cost: training (scaled up if resumed mid-epoch)
                    budget.add_epoch(train_s * run.steps / max(1, done - first) + budget_save_s)
                previous = plan.epochs
                if cut:
                    plan.epochs = budget.epochs = completed
                else:
                    _fit_budget(run, budget, completed)
                if main and cut:
                    log.warning('time budget %s: out of time during epoch %d; stopping there',
                                format_duration(budget.budget_s), completed)
                elif main and previous is None:
                    log.info('time budget %s: ~%d epochs of ~%.1f s (+ %.1f s per validation, '
                             'every %d), ~%.0f s for the export; the schedule runs over %d '
                             'epochs', format_duration(budget.budget_s), plan.epochs,
                             budget.epoch_s, budget.val_s or 0.0, cfg.val_every,
                             budget.finish_s, plan.epochs)
                elif main and plan.epochs != previous:
                    log.info('time budget: %s, %d epochs instead of %d (~%.1f s per epoch; the '
                             'rest of the schedule is spread over the new length)',
                             'running late' if plan.epochs < previous else 'time to spare',
                             plan.epochs, previous, budget.epoch_s)
                if can_validate and not validated and completed == plan.epochs:
                    improved = _validate_into(run, st, row, budget)  # now the last epoch
            if main:
                st.history.append(row)
            st.epoch, st.step = completed, 0
            t_save = time.perf_counter()
            ck = checkpoint_state(run, st, None, _budget_state(run, budget))
            if main:
                if improved:
                    save_checkpoint(run.best_path, ck)
                save_checkpoint(run.last_path, ck)
                _write_metrics(run_dir / 'metrics.csv', st.history)
            budget_save_s = time.perf_counter() - t_save
            if main:
                _log_epoch(row, plan.epochs, improved)
            # a signal during validation/saving: stop now that last.pt is complete; rank 0's
            # on_epoch_end decides for every rank
            run.flag[0] = float(stop['stop'])
            run.flag[1] = float(main and on_epoch_end is not None
                                and bool(on_epoch_end(dict(row))))
            if ddp.enabled:
                dist.all_reduce(run.flag, op=dist.ReduceOp.MAX)
            if run.flag[0] > 0 and completed < plan.epochs:
                if main:
                    log.warning('interrupted: saved %s after epoch %d; continue with --resume '
                                '%s', run.last_path, completed, run.last_path)
                raise KeyboardInterrupt
            if run.flag[1] > 0 and completed < plan.epochs:
                stopped_early = True
                if main:
                    log.info('stopped after epoch %d by on_epoch_end; continue with --resume %s',
                             completed, run.last_path)
                break
            epoch += 1
    return _finish(run, st, stopped_early, budget)


def _finish(run: _Run, st: TrainState, stopped_early: bool, budget: BudgetPlan | None
            ) -> TrainResult:
    """Sync ranks, fill the result, export the best (else the last) model, build the map."""
    cfg, ddp, net = run.cfg, run.ddp, run.net
    if ddp.enabled:
        # DDP keeps parameters in sync; BatchNorm running stats are only broadcast at the next
        # forward, so sync them now: every rank ends with rank 0's (exported) model.
        for buf in net.buffers():
            dist.broadcast(buf, 0)
    net.eval()
    result = TrainResult(config=cfg, run_dir=run.run_dir, model=net, rank=ddp.rank,
                         world_size=ddp.world_size, epochs=st.epoch, train_time_s=st.train_time,
                         stopped_early=stopped_early,
                         pos_mean=[float(v) for v in run.pos_mean],
                         pos_scale=float(run.pos_scale), history=st.history,
                         n_val=len(run.val_samples),
                         time_budget_s=budget.budget_s if budget else None)
    if not ddp.main:
        return result
    result.last_checkpoint = run.last_path
    result.best_checkpoint = run.best_path if run.best_path.exists() else None
    result.selected_on = cfg.val_split if result.best_checkpoint is not None else None
    result.best_epoch = st.best['epoch']
    result.val_median_translation_m = st.best['median_t']
    result.val_median_rotation_deg = st.best['median_r']
    rates = [r['images_per_s'] for r in st.history if r.get('images_per_s')]
    result.images_per_s = float(np.median(rates)) if rates else None
    if cfg.export:
        export_net = net
        if result.best_checkpoint is not None:
            import copy

            export_net = copy.deepcopy(net)
            export_net.load_state_dict(load_checkpoint(run.best_path)['model'])
        t0 = time.perf_counter()
        _export(cfg, result, export_net, run.train_samples, run.val_samples, st.history)
        if budget is not None:
            log.info('export took %.1f s (estimated with the map: %.1f s)',
                     time.perf_counter() - t0, budget.finish_s)
        if cfg.map:
            from posenet_ros.verify.build import build_map

            path, header = build_map(result.export_ts, dataset=cfg.dataset,
                                     split=cfg.train_split, dataset_kind=cfg.dataset_kind,
                                     progress=cfg.progress)
            result.map_path = path
            log.info('scene map %s: %d points from %d frames', path, header['stats']['points'],
                     header['stats']['frames'])
    if budget is not None:
        log.info('time budget %s: %s used (this process and earlier runs)',
                 format_duration(budget.budget_s), format_duration(budget.elapsed()))
    return result


def _export(cfg: TrainConfig, result: TrainResult, net: nn.Module, train_samples, val_samples,
            history) -> None:
    from posenet_ros.model.export import export_model
    from posenet_ros.model.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    map_frame, camera_frame = _dataset_frames(cfg)
    last = history[-1] if history else {}
    training = {
        'epochs': result.epochs, 'best_epoch': result.best_epoch,
        'dataset': str(cfg.dataset), 'dataset_kind': cfg.dataset_kind,
        'train_split': cfg.train_split, 'n_train': len(train_samples),
        'val_split': cfg.val_split, 'n_val': len(val_samples),
        # the split whose median error chose this model (best.pt); None: no validation, the
        # last epoch is exported. 'holdout': frames of train_split never trained on.
        'selected_on': result.selected_on,
        'holdout': ({'fraction': cfg.val_fraction, 'segment': cfg.val_segment,
                     'rule': 'every k-th contiguous segment of each sequence'}
                    if cfg.val_split == 'holdout' else None),
        'time_budget_s': result.time_budget_s,
        'val_median_translation_m': result.val_median_translation_m,
        'val_median_rotation_deg': result.val_median_rotation_deg,
        'val_evaluated_on': 'centre crops of the cached resized val images (eager model)',
        'final_train_loss': last.get('loss'), 'train_time_s': round(result.train_time_s, 2),
        'images_per_s': result.images_per_s, 'world_size': result.world_size,
        'loss': cfg.loss, 's_x': last.get('s_x'), 's_q': last.get('s_q'),
        'quat_loss': cfg.quat_loss, 'quat_hemisphere': cfg.quat_hemisphere,
    }
    quat_ref = _quat_reference(cfg, train_samples)  # the reference the loss used (same labels)
    if quat_ref is not None:
        training['quat_reference_wxyz'] = [round(float(v), 8) for v in quat_ref]
    out = export_model(net, out_dir=cfg.export_dir, name=cfg.name, resize=cfg.resize,
                       crop=cfg.crop, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       pos_mean=result.pos_mean, pos_scale=result.pos_scale,
                       map_frame=map_frame, camera_frame=camera_frame, training=training,
                       config=cfg.to_dict(), pt2=cfg.export_pt2)
    result.export_ts, result.export_pt2, result.export_metadata = (out.ts_path, out.pt2_path,
                                                                   out.metadata)
    log.info('exported %s%s (model id %s)', out.ts_path,
             f' and {out.pt2_path}' if out.pt2_path else '', out.metadata['model_id'])


# --- CLI -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """``posenet-ros train`` options: ``--config`` plus one flag per config key."""
    ap = argparse.ArgumentParser(
        prog='posenet-ros train', argument_default=argparse.SUPPRESS,
        description='Train a PoseNet and export it. Settings: defaults < --config YAML < '
                    'flags (config/train_default.yaml documents every key). Distributed: '
                    'torchrun --nproc_per_node N -m posenet_ros.training.train ...')
    ap.add_argument('--config', dest='config_file', default=None, metavar='YAML',
                    help='YAML file of settings (flat key: value)')
    ap.add_argument('--print-config', action='store_true', default=False,
                    help='print the resolved config as YAML and exit')
    defaults = TrainConfig()
    types = {f.name: f.type for f in fields(TrainConfig)}
    for key in config_keys():
        flag = '--' + key.replace('_', '-')
        default = getattr(defaults, key)
        helptext = f'{HELP[key]} (default: {default})'
        if key == 'resume':
            ap.add_argument(flag, dest=key, nargs='?', const='auto', metavar='CHECKPOINT',
                            help=helptext)
        elif 'bool' in str(types[key]):
            ap.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction,
                            help=helptext)
        else:
            ap.add_argument(flag, dest=key, metavar=key.upper(), help=helptext)
    return ap


def main(argv: list[str] | None = None) -> int:
    """``posenet-ros train``: returns the exit code (130 after Ctrl-C, once saved)."""
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop('config_file')
    print_only = args.pop('print_config')
    cfg = load_config(config_file, args)
    if print_only:
        print(dump_yaml(cfg), end='')
        return 0
    rank = int(os.environ.get('RANK', '0'))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format='%(asctime)s %(levelname)s %(message)s', stream=sys.stderr)
    started_at = time.perf_counter() - process_age_s()  # the budget counts the whole command
    try:
        result = train(cfg, started_at=started_at)
    except KeyboardInterrupt:
        return 130
    if rank == 0:
        parts = [f'trained {result.epochs} epochs in {result.train_time_s:.0f} s']
        if result.val_median_translation_m is not None:
            parts.append(f'best val median {result.val_median_translation_m:.3f} m / '
                         f'{result.val_median_rotation_deg:.2f} deg (epoch {result.best_epoch})')
        if result.export_ts:
            parts.append(f'exported {result.export_ts}')
        if result.map_path:
            parts.append(f'scene map {result.map_path}')
        print('; '.join(parts))
    return 0


if __name__ == '__main__':
    from posenet_ros.cli import main as _cli_main

    sys.exit(_cli_main(['train', *sys.argv[1:]]))
