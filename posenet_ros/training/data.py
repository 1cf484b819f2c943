"""The trainer's data: the labelled frames, the training batches, the validation frames.

:func:`load_train_data` reads the train split (any reader of ``posenet_ros.datasets``), holds
out the validation frames (``val_split: holdout``, :mod:`posenet_ros.training.holdout`; or
reads a named val split) and fixes the position normalisation (from the frames trained on, or
from the checkpoint being resumed). :class:`TrainBatches` turns a step of an epoch into network
inputs: the images come from a uint8 memmap cache decoded and resized once
(:mod:`posenet_ros.training.image_cache`), the order from a ``DistributedSampler`` seeded by
``(seed, epoch)``, the random crops and colour jitter from a generator reseeded every epoch.
:class:`ValidationSet` holds the validation frames, evaluated on centre crops of the same
cache.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from posenet_ros.core.errors import CheckpointError, ConfigError, EmptySplitError
from posenet_ros.training.config import TrainConfig
from posenet_ros.training.distributed import Distributed

__all__ = ['TrainData', 'TrainBatches', 'ValidationSet', 'load_train_data',
           'translation_normalization', 'labels_fingerprint', 'center_crop_normalize',
           'derived_seed', 'quat_reference', 'dataset_frames']

log = logging.getLogger(__name__)


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


def labels_fingerprint(samples) -> str:
    """A short hash of the names and poses trained on (a resume must train on the same)."""
    h = hashlib.sha256()
    for s in samples:
        h.update(s.name.encode())
        h.update(np.round(np.concatenate([s.position, s.quaternion]), 6).tobytes())
    return h.hexdigest()[:16]


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (numpy SeedSequence)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


def center_crop_normalize(frames: torch.Tensor, crop: int, mean: torch.Tensor,
                          std: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` -> normalised float ``(B, 3, crop, crop)`` (centre window)."""
    h, w = frames.shape[1], frames.shape[2]
    top, left = (h - crop) // 2, (w - crop) // 2
    x = frames[:, top:top + crop, left:left + crop].permute(0, 3, 1, 2).float() / 255.0
    return (x - mean) / std


def imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std as ``(1, 3, 1, 1)`` tensors on ``device``."""
    from posenet_ros.model.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    return (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))


def quat_reference(cfg: TrainConfig, train_samples) -> np.ndarray | None:
    """Reference rotation (wxyz) whose hemisphere the labels are put in, or None (canonical)."""
    if cfg.quat_hemisphere != 'reference':
        return None
    from posenet_ros.core.geometry import mean_quaternion

    return mean_quaternion(np.stack([s.quaternion for s in train_samples]))


def dataset_frames(cfg: TrainConfig) -> tuple[str, str]:
    """``(map_frame, camera_frame)``: the config's, else the dataset manifest's, else defaults."""
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


# --- the labelled frames --------------------------------------------------------------------
@dataclass
class TrainData:
    """The frames trained on and validated on, and the position normalisation of the labels."""

    train: list
    val: list
    fingerprint: str  # labels_fingerprint(train)
    pos_mean: np.ndarray
    pos_scale: float
    quat_ref: np.ndarray | None  # hemisphere reference of the rotation labels (or None)


def _load_split(cfg: TrainConfig, split: str, role: str):
    from posenet_ros.datasets import load_dataset

    try:
        return load_dataset(cfg.dataset, split, kind=cfg.dataset_kind)
    except EmptySplitError as exc:
        key = 'val_split' if role == 'val' else 'train_split'
        extra = ' or set val_split: null to train without validation' if role == 'val' else ''
        raise EmptySplitError(f'{exc} (config {key}={split!r}{extra})') from None


def _split_samples(cfg: TrainConfig, main: bool) -> tuple[list, list]:
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


def load_train_data(cfg: TrainConfig, main: bool, ckpt: dict | None = None) -> TrainData:
    """The splits and normalisation; ``ckpt``: the checkpoint resumed (same labels, its scale)."""
    train_samples, val_samples = _split_samples(cfg, main)
    fingerprint = labels_fingerprint(train_samples)
    # Labels are canonical (w >= 0), which has a seam where views cross w = 0; 'reference' puts
    # them in the hemisphere of the training labels' mean rotation (the loss flips them).
    quat_ref = quat_reference(cfg, train_samples)
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
        pos_mean, pos_scale = translation_normalization(
            np.stack([s.position for s in train_samples]))
    else:
        pos_mean, pos_scale = np.zeros(3), 1.0
    if main:
        log.info('data: %d train (%s), %d val (%s) samples from %s; position mean %s, scale '
                 '%.4g m', len(train_samples), cfg.train_split, len(val_samples), cfg.val_split,
                 cfg.dataset, np.round(pos_mean, 4).tolist(), pos_scale)
    return TrainData(train_samples, val_samples, fingerprint, pos_mean, float(pos_scale),
                     quat_ref)


def _images(cfg: TrainConfig, samples, cache_dir: Path, dist: Distributed, desc: str):
    from posenet_ros.training.image_cache import LazyImages, build_image_cache

    if not cfg.cache:
        return LazyImages(samples, cfg.resize)
    # One builder per machine (LOCAL_RANK 0); the others wait and then open the finished file.
    if dist.local_rank == 0:
        images = build_image_cache(samples, cfg.resize, cache_dir,
                                   progress=cfg.progress and dist.main, desc=desc)
    dist.barrier()
    if dist.local_rank != 0:
        images = build_image_cache(samples, cfg.resize, cache_dir, progress=False, desc=desc)
    return images


def _cache_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.run_dir).parent / 'image_cache'


# --- what a training step reads ---------------------------------------------------------------
@dataclass
class TrainBatches:
    """Network inputs and labels of every step of every epoch, on this process's share."""

    images: object  # CachedImages or LazyImages of data.train
    positions: torch.Tensor  # normalised (N, 3)
    quaternions: torch.Tensor  # (N, 4) wxyz
    sampler: torch.utils.data.DistributedSampler
    batch: int  # images per step on this process
    steps: int  # steps per epoch (the last incomplete batch is dropped)
    generator: torch.Generator  # all augmentation randomness
    transform: Callable[[torch.Tensor], torch.Tensor]  # uint8 frames -> normalised crops
    device: torch.device

    def order(self, epoch: int) -> list[int]:
        """The frame order of this process in ``epoch``: a permutation seeded by (seed, epoch)."""
        self.sampler.set_epoch(epoch)
        return list(self.sampler)

    def seed_epoch(self, seed: int, epoch: int, rank: int) -> None:
        """Reseed the augmentation and the global torch RNG from ``(seed, epoch, rank)``."""
        self.generator.manual_seed(derived_seed(seed, epoch, rank, 1))
        torch.manual_seed(derived_seed(seed, epoch, rank, 2))  # dropout, stochastic depth

    def get(self, order: list[int], step: int):
        """``(inputs, positions, quaternions)`` of ``step`` on the training device."""
        idx = order[step * self.batch:(step + 1) * self.batch]
        frames = self.images.batch(idx)
        if self.device.type == 'cuda':
            frames = frames.pin_memory()
        frames = frames.to(self.device, non_blocking=True)
        with torch.no_grad():
            x = self.transform(frames)
        return (x, self.positions[idx].to(self.device, non_blocking=True),
                self.quaternions[idx].to(self.device, non_blocking=True))


def build_batches(cfg: TrainConfig, data: TrainData, dist: Distributed,
                  device: torch.device) -> TrainBatches:
    """Cache the training images and set up the sampler and augmentation."""
    from torch.utils.data import DistributedSampler

    from posenet_ros.model.preprocessing import IMAGENET_MEAN, IMAGENET_STD, TrainAugment

    images = _images(cfg, data.train, _cache_dir(cfg), dist, 'cache train images')
    h, w = images.size
    if min(h, w) < cfg.crop:
        raise ConfigError(f'crop {cfg.crop} does not fit the resized images ({h}x{w}); '
                          'lower crop or raise resize')
    positions = np.stack([s.position for s in data.train])
    sampler = DistributedSampler(range(len(data.train)), num_replicas=dist.world_size,
                                 rank=dist.rank, shuffle=True, seed=cfg.seed, drop_last=False)
    batch = min(cfg.batch_size, len(sampler))
    generator = torch.Generator()
    if cfg.augment:
        transform = TrainAugment(cfg.crop, IMAGENET_MEAN, IMAGENET_STD, cfg.brightness,
                                 cfg.contrast, cfg.saturation, generator=generator).to(device)
    else:
        mean, std = imagenet_stats(device)

        def transform(frames):
            return center_crop_normalize(frames, cfg.crop, mean, std)
    return TrainBatches(
        images=images,
        positions=torch.from_numpy((positions - data.pos_mean) / data.pos_scale).float(),
        quaternions=torch.from_numpy(np.stack([s.quaternion for s in data.train])).float(),
        sampler=sampler, batch=batch,
        steps=max(1, len(sampler) // batch),  # no last incomplete batch (BatchNorm of size 1)
        generator=generator, transform=transform, device=device)


# --- the validation frames ------------------------------------------------------------------
@dataclass
class ValidationSet:
    """The validation frames' cached images and true poses (rank 0 only)."""

    images: object
    positions: np.ndarray
    quaternions: np.ndarray

    @classmethod
    def build(cls, cfg: TrainConfig, data: TrainData, dist: Distributed) -> ValidationSet | None:
        """Cache the validation images; None without validation frames or off rank 0."""
        if not (data.val and dist.main):  # only rank 0 validates; no barrier here
            return None
        images = _images(cfg, data.val, _cache_dir(cfg), Distributed(), 'cache val images')
        return cls(images, np.stack([s.position for s in data.val]),
                   np.stack([s.quaternion for s in data.val]))
