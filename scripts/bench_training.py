#!/usr/bin/env python3
"""Training throughput (images/s) with and without the decoded-image cache.

Runs the trainer's own building blocks (model, loss, augmentation, optimiser of
``posenet_ros.training.learner`` and ``posenet_ros.training.schedule``) for a number of steps
on a dataset, once reading batches from the uint8 memmap cache and once decoding + resizing
every image on the fly, and reports:

* ``data``: images/s of batch loading alone (what the cache removes),
* ``train``: images/s of full training steps (loading + augmentation + forward/backward/step).

Example (synthetic scene, default config = EfficientNet-Lite0, 256/224, batch 32)::

    posenet-ros synth --out /tmp/synth
    python scripts/bench_training.py --dataset /tmp/synth/dataset --threads 2 \
        --out bench_training.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _train_steps(cfg, images, labels, steps: int, warmup: int) -> float:
    """Images/s of ``steps`` timed training steps (after ``warmup`` untimed ones)."""
    from posenet_ros.model.network import build_posenet
    from posenet_ros.model.preprocessing import IMAGENET_MEAN, IMAGENET_STD, TrainAugment
    from posenet_ros.training.learner import TrainStep
    from posenet_ros.training.losses import build_loss
    from posenet_ros.training.schedule import build_optimizer

    torch.manual_seed(cfg.seed)
    net = build_posenet(cfg.backbone, cfg.pretrained, cfg.dropout)
    loss = build_loss(cfg.loss, cfg.beta, cfg.s_x_init, cfg.s_q_init)
    step = TrainStep(net, loss).train()
    opt = build_optimizer(cfg, net, loss)
    gen = torch.Generator().manual_seed(cfg.seed)
    aug = TrainAugment(cfg.crop, IMAGENET_MEAN, IMAGENET_STD, cfg.brightness, cfg.contrast,
                       cfg.saturation, generator=gen)
    pos, quat = labels
    n = len(images)
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen).tolist()
        x = aug(images.batch(idx))
        value, _ = step(x, pos[idx], quat[idx])
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def _data_only(images, batch: int, batches: int) -> float:
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(batches):
        images.batch(torch.randint(0, len(images), (batch,), generator=gen).tolist())
    return batches * batch / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--dataset', required=True, help='dataset folder (e.g. posenet-ros synth)')
    ap.add_argument('--config', default=None, help='training YAML (default: built-in defaults)')
    ap.add_argument('--steps', type=int, default=4, help='timed training steps per mode')
    ap.add_argument('--warmup', type=int, default=1, help='untimed steps first')
    ap.add_argument('--data-batches', type=int, default=10, help='batches for the data-only test')
    ap.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    ap.add_argument('--cache-dir', default=None, help='where to build the cache (default: tmp)')
    ap.add_argument('--out', default='bench_training.json', help='JSON result file')
    args = ap.parse_args(argv)

    from posenet_ros.datasets import load_dataset
    from posenet_ros.training.config import load_config
    from posenet_ros.training.image_cache import LazyImages, build_image_cache

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, {'dataset': args.dataset})
    samples = load_dataset(cfg.dataset, cfg.train_split, kind=cfg.dataset_kind)
    pos = torch.from_numpy(np.stack([s.position for s in samples])).float()
    pos = (pos - pos.mean(0)) / pos.std().clamp_min(1e-6)
    quat = torch.from_numpy(np.stack([s.quaternion for s in samples])).float()
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = Path(args.cache_dir or tmp)
        t0 = time.perf_counter()
        cached = build_image_cache(samples, cfg.resize, cache_dir, progress=True)
        build_s = time.perf_counter() - t0
        lazy = LazyImages(samples, cfg.resize, size=cached.size)
        data_cached = _data_only(cached, cfg.batch_size, args.data_batches)
        data_lazy = _data_only(lazy, cfg.batch_size, max(1, args.data_batches // 5))
        train_cached = _train_steps(cfg, cached, (pos, quat), args.steps, args.warmup)
        train_lazy = _train_steps(cfg, lazy, (pos, quat), args.steps, args.warmup)
    result = {
        'dataset': str(cfg.dataset), 'images': len(samples), 'backbone': cfg.backbone,
        'resize': cfg.resize, 'crop': cfg.crop, 'batch_size': cfg.batch_size,
        'threads': torch.get_num_threads(), 'torch': torch.__version__,
        'machine': platform.processor() or platform.machine(),
        'cache_build_s': round(build_s, 2),
        'data_images_per_s': {'cache': round(data_cached, 1), 'decode': round(data_lazy, 1),
                              'ratio': round(data_cached / data_lazy, 2)},
        'train_images_per_s': {'cache': round(train_cached, 2), 'decode': round(train_lazy, 2),
                               'ratio': round(train_cached / train_lazy, 3)},
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f'{cfg.backbone} {cfg.resize}/{cfg.crop} batch {cfg.batch_size}, '
          f'{torch.get_num_threads()} thread(s), {len(samples)} images')
    print(f'cache build: {build_s:.1f} s')
    print(f'data loading: cache {data_cached:.1f} img/s, decode {data_lazy:.1f} img/s '
          f'(x{data_cached / data_lazy:.1f})')
    print(f'training:     cache {train_cached:.2f} img/s, decode {train_lazy:.2f} img/s '
          f'(x{train_cached / train_lazy:.2f})')
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
