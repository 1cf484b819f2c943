"""Shared test helpers: tiny real exported models and real-looking frames.

``make_tiny_export`` builds a random-init PoseNet and exports it with the real exporter. By
default only the TorchScript file is written (~2 s); ``pt2=True`` also writes the ``.pt2``
(torch.export is slow here: ~10 s), so share such a model through a module-scoped fixture.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from posenet_ros.model.export import export_model
from posenet_ros.model.network import build_posenet

SAMPLE_IMAGE = 'grace_hopper.jpg'  # a real photo (512 wide x 600 high) shipped with matplotlib


def spread_head(net: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Re-initialise the pose regressors with larger random weights (in place).

    The default head init is deliberately small (near-identity rotation), which makes every
    frame give almost the same output; tests comparing implementations need outputs that vary
    with the input and quaternions in both hemispheres.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if '.fc_xyz.' in name or '.fc_wpqr.' in name:
                p.copy_(torch.randn(p.shape, generator=gen) * (std if p.dim() > 1 else 1.0))
    return net


# make_tiny_export's arguments -> a private copy of the first export made with them (tests
# may damage the files they get; these are never handed out)
_EXPORTS: dict[tuple, Path] = {}
_EXPORT_CACHE = tempfile.TemporaryDirectory(prefix='posenet_test_exports_')


def make_tiny_export(tmp_dir, backbone: str = 'mobilenet_v3_small', crop: int = 64,
                     resize: int | None = None, name: str = 'tiny', pt2: bool = False,
                     pos_mean=(1.0, -2.0, 0.5), pos_scale: float = 3.0,
                     seed: int = 0, training: dict | None = None) -> Path:
    """Export a random-init (seeded) PoseNet; returns the ``.ts`` path (``.pt2`` beside it).

    ``training`` adds keys to the metadata's training summary (e.g. ``selected_on``). The same
    arguments give the same files (the weights are seeded, the model id is their hash), so
    later calls copy the first call's files into ``tmp_dir`` instead of exporting again.
    """
    key = (backbone, crop, resize, name, pt2, tuple(pos_mean), pos_scale, seed,
           json.dumps(training, sort_keys=True))
    suffixes = ('.ts', '.pt2') if pt2 else ('.ts',)
    if key not in _EXPORTS:
        _EXPORTS[key] = _export(Path(_EXPORT_CACHE.name) / str(len(_EXPORTS)), backbone, crop,
                                resize, name, pt2, pos_mean, pos_scale, seed, training)
    Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    for suffix in suffixes:
        shutil.copyfile(_EXPORTS[key].with_suffix(suffix), Path(tmp_dir) / f'{name}{suffix}')
    return Path(tmp_dir) / f'{name}.ts'


def _export(out_dir, backbone, crop, resize, name, pt2, pos_mean, pos_scale, seed, training):
    torch.manual_seed(seed)
    net = spread_head(build_posenet(backbone), seed=seed).eval()
    result = export_model(net, out_dir=out_dir, name=name, resize=resize or crop + crop // 8,
                          crop=crop, pos_mean=pos_mean, pos_scale=pos_scale,
                          training={'epochs': 0, 'note': 'random init test model',
                                    **(training or {})},
                          config={'backbone': backbone}, pt2=pt2)
    return result.ts_path


def sample_image_rgb() -> np.ndarray:
    """A real photo as RGB uint8 (600, 512, 3), non-square."""
    import cv2
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data(SAMPLE_IMAGE, asfileobj=False)
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def random_frames(shape, seed: int = 0) -> np.ndarray:
    """Random uint8 frames of ``shape`` (..., H, W, 3)."""
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.fixture(scope='module', autouse=True)
def one_torch_thread():
    """One intra-op torch thread for a test module (import it into the module to apply it).

    The test machine is shared: one thread avoids OpenMP spin-wait contention.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def train_small_scene_model(root: Path, dataset, epochs: int, build_map: bool = False):
    """Train the CPU demo recipe at 64/56 px on ``dataset`` (1 thread); returns the TrainResult.

    The trained-and-exported model the node tests replay bags through (``root/models/scene.ts``).
    """
    from posenet_ros.training.config import load_config
    from posenet_ros.training.train import train

    demo = Path(__file__).resolve().parents[1] / 'config' / 'train_demo_cpu.yaml'
    cfg = load_config(demo, {
        'dataset': str(dataset), 'run_dir': str(root / 'run'), 'name': 'scene',
        'export_dir': str(root / 'models'), 'epochs': epochs, 'resize': 64, 'crop': 56,
        'num_threads': 1, 'export_pt2': False, 'progress': False, 'val_every': 100,
        'cache_dir': str(root / 'cache'), 'map': build_map})
    return train(cfg)
