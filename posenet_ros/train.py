"""``posenet-ros train``: train a PoseNet on a dataset, keep resumable checkpoints, export it.

One typed function, :func:`train`, and a thin CLI, :func:`main`. The same code runs on one
process (CPU or one GPU) and under ``torchrun`` with DistributedDataParallel (NCCL on GPUs,
gloo on CPUs; multi-GPU and multi-node)::

    posenet-ros train --config config/train_demo_cpu.yaml --dataset data/synth/dataset
    torchrun --nproc_per_node 4 -m posenet_ros.train --config my.yaml --device cuda

Pipeline: read the train/val splits (any reader of ``posenet_ros.datasets``); normalise
positions with the training split's mean and RMS radius (stored in the export, which
de-normalises); decode and resize every image once into a uint8 memmap cache
(``posenet_ros.image_cache``); per step, random crop + colour jitter (``TrainAugment``), beta or
learned loss, optimiser + per-step LR schedule, AMP on CUDA; per epoch, validation (median
translation/rotation error on the val split, centre crops of the cached images), ``last.pt``
and ``best.pt`` (atomic), a row of ``metrics.csv``; at the end, the best model is exported
(TorchScript + ``.pt2``) with a training summary and the resolved config in its metadata.

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

from posenet_ros.atomic import atomic_path
from posenet_ros.checkpoint import check_resumable, load_checkpoint, save_checkpoint
from posenet_ros.config import (
    HELP,
    RESUME_MAY_DIFFER,
    TrainConfig,
    config_keys,
    dump_yaml,
    load_config,
    resume_defaults,
)
from posenet_ros.errors import (
    CheckpointError,
    ConfigError,
    EmptySplitError,
    TrainingDivergedError,
)

__all__ = ['TrainResult', 'train', 'main', 'build_parser', 'evaluate_cached',
           'translation_normalization', 'METRICS_COLUMNS']

log = logging.getLogger('posenet_ros.train')

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
    from posenet_ros.relocalizer import resolve_device

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


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == 'cosine':
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(
                math.pi * progress))
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
    from posenet_ros.geometry import mean_quaternion

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
    from posenet_ros.metrics import frame_errors
    from posenet_ros.preprocessing import IMAGENET_MEAN, IMAGENET_STD

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
    from posenet_ros.image_cache import LazyImages, build_image_cache

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
def train(cfg: TrainConfig, on_epoch_end=None) -> TrainResult:
    """Train (or resume) according to ``cfg``; export the best model; return a summary.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this; only rank 0 logs,
    validates, writes checkpoints/metrics and exports. Raises :class:`ConfigError`,
    :class:`~posenet_ros.errors.DatasetError`, :class:`CheckpointError`,
    :class:`TrainingDivergedError`; ``KeyboardInterrupt`` after saving a resumable checkpoint.

    ``on_epoch_end(row: dict) -> bool``, called on rank 0 after each epoch's checkpoint with that
    epoch's metrics row: returning True stops training there (early stopping; ``last.pt`` is
    resumable, the best model is still exported).
    """
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
        return _train(cfg, ddp, device, run_dir, on_epoch_end)
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)
        if file_handler is not None:
            log.removeHandler(file_handler)
            file_handler.close()
        if ddp.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, ddp: _Dist, device: torch.device, run_dir: Path,
           on_epoch_end) -> TrainResult:
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DistributedSampler
    from tqdm import tqdm

    from posenet_ros.losses import build_loss
    from posenet_ros.model import build_posenet
    from posenet_ros.preprocessing import IMAGENET_MEAN, IMAGENET_STD, TrainAugment

    main = ddp.main
    last_path, best_path = run_dir / 'last.pt', run_dir / 'best.pt'

    # -- resume: read and check the checkpoint before any expensive work ----------------------
    ckpt = None
    if cfg.resume:
        resume_path = last_path if cfg.resume == 'auto' else Path(cfg.resume)
        ckpt = load_checkpoint(resume_path)
        # a key missing from an older checkpoint did not exist yet: it ran with the default
        for key, value in resume_defaults().items():
            ckpt.setdefault('config', {}).setdefault(key, value)
        check_resumable(ckpt, cfg.to_dict(), resume_path, RESUME_MAY_DIFFER)
        if ckpt['config'].get('epochs') != cfg.epochs and main:
            log.warning('resuming with epochs=%d (checkpoint: %s): the LR schedule is '
                        'recomputed for the new length', cfg.epochs, ckpt['config'].get('epochs'))
    elif last_path.exists():
        raise ConfigError(f'{run_dir} already holds last.pt from an earlier run: pass --resume '
                          'to continue it, choose another --run-dir, or delete the folder')

    if main:
        log.info('resolved config:\n%s', dump_yaml(cfg).rstrip())
        (run_dir / 'config.yaml').write_text(dump_yaml(cfg), encoding='utf-8')
        log.info('device %s, %d process(es), torch %s', device, ddp.world_size,
                 torch.__version__)

    # -- data ---------------------------------------------------------------------------------
    train_samples = _load_split(cfg, cfg.train_split, 'train')
    val_samples = _load_split(cfg, cfg.val_split, 'val') if cfg.val_split else []
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

    # -- model, loss, optimiser, schedule -----------------------------------------------------
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
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, steps))
    use_amp = cfg.amp and device.type == 'cuda'
    scaler = torch.amp.GradScaler('cuda', enabled=use_amp)
    aug_gen = torch.Generator()
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    augment = TrainAugment(cfg.crop, IMAGENET_MEAN, IMAGENET_STD, cfg.brightness, cfg.contrast,
                           cfg.saturation, generator=aug_gen).to(device)

    start_epoch, start_step = 0, 0
    history: list[dict] = []
    best = {'epoch': None, 'metric': math.inf, 'median_t': None, 'median_r': None}
    train_time = 0.0
    partial = None
    if ckpt is not None:
        net.load_state_dict(ckpt['model'])
        loss_fn.load_state_dict(ckpt['loss'])
        optimizer.load_state_dict(ckpt['optimizer'])
        scheduler.load_state_dict(ckpt['scheduler'])
        scaler.load_state_dict(ckpt['scaler'])
        start_epoch, start_step = int(ckpt['epoch']), int(ckpt['step'])
        history = list(ckpt.get('history', []))
        best = dict(ckpt.get('best', best))
        train_time = float(ckpt.get('train_time_s', 0.0))
        partial = ckpt.get('partial')
        rng_states = ckpt.get('rng') or []
        if start_step and len(rng_states) != ddp.world_size:
            raise CheckpointError(
                f'{cfg.resume}: written mid-epoch by {len(rng_states)} process(es), resumed by '
                f'{ddp.world_size}; resume with the same number of processes')
        if main:
            log.info('resumed from %s at epoch %d step %d', cfg.resume, start_epoch, start_step)
    if ddp.enabled:
        step_module = DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == 'cuda' else None)

    def state(epoch: int, step: int, partial_sums=None) -> dict:
        rng = _rng_state(aug_gen)
        if ddp.enabled:  # every rank's RNG state, so a mid-epoch resume is exact on all ranks
            gathered: list = [None] * ddp.world_size
            dist.all_gather_object(gathered, rng)
            rng = gathered
        else:
            rng = [rng]
        return {'config': cfg.to_dict(), 'backbone': cfg.backbone,
                'model': net.state_dict(), 'loss': loss_fn.state_dict(),
                'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict(),
                'scaler': scaler.state_dict(), 'epoch': epoch, 'step': step, 'rng': rng,
                'world_size': ddp.world_size, 'best': best, 'history': history,
                'pos_mean': [float(v) for v in pos_mean], 'pos_scale': float(pos_scale),
                'train_fingerprint': fingerprint, 'train_time_s': train_time,
                'partial': partial_sums}

    if main:
        n_params = sum(p.numel() for p in net.parameters())
        log.info('model %s (%.1fM parameters, pretrained=%s), loss %s, %s lr %.3g %s '
                 'schedule, %d steps/epoch of %d x %d process(es), crop %d from %dx%d',
                 cfg.backbone, n_params / 1e6, cfg.pretrained, cfg.loss, cfg.optimizer, cfg.lr,
                 cfg.schedule, steps, batch, ddp.world_size, cfg.crop, h, w)

    net.train()
    if cfg.freeze_bn:
        # BatchNorm in inference mode: normalised with the pretrained running statistics, which
        # stay fixed (no batch statistics of a few near-identical frames; what is trained is
        # also what the export computes). evaluate_cached restores these per-module modes.
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    last_saved = None
    completed, stopped_early = start_epoch, False
    # [stop requested, non-finite loss], all-reduced under DDP (NCCL needs it on the GPU)
    flag = torch.zeros(2, device=device if ddp.enabled else 'cpu')
    with _stop_on_signal(True) as stop:
        if main and start_epoch < cfg.epochs:
            log.info('training epochs %d..%d (Ctrl-C saves a resumable last.pt)',
                     start_epoch + 1, cfg.epochs)
        for epoch in range(start_epoch, cfg.epochs):
            sampler.set_epoch(epoch)  # data order = permutation seeded by (seed, epoch)
            order = list(sampler)
            resuming_mid = epoch == start_epoch and start_step > 0
            if resuming_mid:
                _set_rng_state(ckpt['rng'][ddp.rank], aug_gen)
                sums = dict(partial or {})
            else:
                _seed_epoch(cfg.seed, epoch, ddp.rank, aug_gen)
                sums = {}
            first = start_step if resuming_mid else 0
            t0 = time.perf_counter()
            bar = tqdm(total=steps, initial=first, desc=f'epoch {epoch + 1}/{cfg.epochs}',
                       unit='step', disable=not (cfg.progress and main), leave=False)
            for step in range(first, steps):
                idx = order[step * batch:(step + 1) * batch]
                frames = train_images.batch(idx)
                if device.type == 'cuda':
                    frames = frames.pin_memory()
                frames = frames.to(device, non_blocking=True)
                with torch.no_grad():
                    x = (augment(frames) if cfg.augment
                         else _center_crop_normalize(frames, cfg.crop, mean, std))
                pos = pos_t[idx].to(device, non_blocking=True)
                quat = quat_t[idx].to(device, non_blocking=True)
                with torch.autocast(device_type=device.type, dtype=torch.float16,
                                    enabled=use_amp):
                    loss, parts = step_module(x, pos, quat)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(step_module.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                sums['n'] = sums.get('n', 0) + 1
                flag[0] = float(stop['stop'])
                flag[1] = float(not math.isfinite(parts.get('loss', float(loss.detach()))))
                if ddp.enabled:
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                bar.update(1)
                bar.set_postfix(loss=f'{parts.get("loss", float(loss.detach())):.4f}')
                if flag[1] > 0:
                    raise TrainingDivergedError(
                        f'the loss became NaN/inf at epoch {epoch + 1} step {step + 1}; lower '
                        f'lr (now {cfg.lr:g}), enable grad_clip, or check the labels; resume '
                        f'from {last_saved or "scratch"}')
                if flag[0] > 0:
                    bar.close()
                    train_time += time.perf_counter() - t0
                    st = state(epoch, step + 1, sums)
                    if main:
                        save_checkpoint(last_path, st)
                        log.warning('interrupted: saved %s (epoch %d, step %d); continue with '
                                    '--resume %s', last_path, epoch + 1, step + 1, last_path)
                    raise KeyboardInterrupt
            bar.close()
            epoch_time = time.perf_counter() - t0
            train_time += epoch_time
            n = max(1, sums.get('n', 1))
            row = {'epoch': epoch + 1, 'lr': optimizer.param_groups[0]['lr'],
                   'epoch_time_s': round(epoch_time, 3),
                   'images_per_s': round((steps - first) * batch * ddp.world_size
                                         / max(epoch_time, 1e-9), 2)}
            for k in ('loss', 'l_x', 'l_q', 's_x', 's_q'):
                if k in sums:
                    row[k] = sums[k] / n
            if ddp.enabled:  # report the mean over ranks
                vals = torch.tensor([row.get(k, 0.0) for k in ('loss', 'l_x', 'l_q')],
                                    dtype=torch.float64, device=flag.device)
                dist.all_reduce(vals)
                for k, v in zip(('loss', 'l_x', 'l_q'), (vals / ddp.world_size).tolist()):
                    row[k] = v
            validate = val_images is not None and (
                (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs)
            improved = False
            if main and validate:
                t_err, r_err = evaluate_cached(net, val_images, val_p, val_q, pos_mean,
                                               pos_scale, cfg.crop, device,
                                               batch_size=2 * batch, amp=use_amp)
                med_t, med_r = float(np.median(t_err)), float(np.median(r_err))
                row['val_median_t_m'], row['val_median_r_deg'] = med_t, med_r
                metric = _metric_of(cfg.best_metric, med_t, med_r)
                if metric < best['metric']:
                    improved = True
                    best = {'epoch': epoch + 1, 'metric': metric, 'median_t': med_t,
                            'median_r': med_r}
            if main:
                history.append(row)
                log.info('epoch %d/%d: loss %.4f (l_x %.4f, l_q %.4f)%s, %.1f img/s%s',
                         epoch + 1, cfg.epochs, row.get('loss', math.nan),
                         row.get('l_x', math.nan), row.get('l_q', math.nan),
                         f', s_x {row["s_x"]:.3f} s_q {row["s_q"]:.3f}' if 's_x' in row else '',
                         row['images_per_s'],
                         f', val median {row["val_median_t_m"]:.3f} m '
                         f'{row["val_median_r_deg"]:.2f} deg' + (' (best)' if improved else '')
                         if 'val_median_t_m' in row else '')
            st = state(epoch + 1, 0)
            if main:
                if improved:
                    save_checkpoint(best_path, st)
                save_checkpoint(last_path, st)
                last_saved = last_path
                _write_metrics(run_dir / 'metrics.csv', history)
            completed = epoch + 1
            # a signal during validation/saving: stop now that last.pt is complete; rank 0's
            # on_epoch_end decides for every rank
            flag[0] = float(stop['stop'])
            flag[1] = float(main and on_epoch_end is not None and bool(on_epoch_end(dict(row))))
            if ddp.enabled:
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag[0] > 0 and completed < cfg.epochs:
                if main:
                    log.warning('interrupted: saved %s after epoch %d; continue with --resume '
                                '%s', last_path, completed, last_path)
                raise KeyboardInterrupt
            if flag[1] > 0 and completed < cfg.epochs:
                stopped_early = True
                if main:
                    log.info('stopped after epoch %d by on_epoch_end; continue with --resume %s',
                             completed, last_path)
                break

    if ddp.enabled:
        # DDP keeps parameters in sync; BatchNorm running stats are only broadcast at the next
        # forward, so sync them now: every rank ends with rank 0's (exported) model.
        for buf in net.buffers():
            dist.broadcast(buf, 0)
    net.eval()
    result = TrainResult(config=cfg, run_dir=run_dir, model=net, rank=ddp.rank,
                         world_size=ddp.world_size, epochs=completed, train_time_s=train_time,
                         stopped_early=stopped_early,
                         pos_mean=[float(v) for v in pos_mean], pos_scale=float(pos_scale),
                         history=history)
    if not main:
        return result
    result.last_checkpoint = last_path
    result.best_checkpoint = best_path if best_path.exists() else None
    result.best_epoch = best['epoch']
    result.val_median_translation_m = best['median_t']
    result.val_median_rotation_deg = best['median_r']
    rates = [r['images_per_s'] for r in history if r.get('images_per_s')]
    result.images_per_s = float(np.median(rates)) if rates else None
    if cfg.export:
        export_net = net
        if result.best_checkpoint is not None:
            import copy

            export_net = copy.deepcopy(net)
            export_net.load_state_dict(load_checkpoint(best_path)['model'])
        _export(cfg, result, export_net, train_samples, val_samples, history)
        if cfg.map:
            from posenet_ros.verify.build import build_map

            path, header = build_map(result.export_ts, dataset=cfg.dataset,
                                     split=cfg.train_split, dataset_kind=cfg.dataset_kind,
                                     progress=cfg.progress)
            result.map_path = path
            log.info('scene map %s: %d points from %d frames', path, header['stats']['points'],
                     header['stats']['frames'])
    return result


def _export(cfg: TrainConfig, result: TrainResult, net: nn.Module, train_samples, val_samples,
            history) -> None:
    from posenet_ros.export import export_model
    from posenet_ros.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    map_frame, camera_frame = _dataset_frames(cfg)
    last = history[-1] if history else {}
    training = {
        'epochs': result.epochs, 'best_epoch': result.best_epoch,
        'dataset': str(cfg.dataset), 'dataset_kind': cfg.dataset_kind,
        'train_split': cfg.train_split, 'n_train': len(train_samples),
        'val_split': cfg.val_split, 'n_val': len(val_samples),
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
                    'torchrun --nproc_per_node N -m posenet_ros.train ...')
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
    try:
        result = train(cfg)
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
