"""Load an exported PoseNet (``.ts`` / ``.pt2``) and predict camera poses. No ROS needed.

The model runtime: loading, device, warm-up and one network pass per frame.
:class:`posenet_ros.localizer.Localizer` builds the frame pipeline (base pose, covariances,
verification against the scene map) on top of it.

>>> reloc = Relocalizer('models/scene.ts', device='auto')
>>> pred = reloc.predict(rgb_uint8_hxwx3)
>>> pred.position, pred.quaternion_wxyz   # T_map_cam: camera centre, camera-to-map rotation
>>> pred.feature                          # (D,) retrieval feature of the same pass, or None

Command line: ``posenet-ros predict MODEL IMAGE... [--device cpu]`` prints one line per image.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from posenet_ros.core.errors import (
    DeviceUnavailableError,
    IncompatibleModelError,
    InvalidFrameError,
    ModelFileError,
    NonFiniteOutputError,
    PoseNetError,
)
from posenet_ros.model.export import (
    OUTPUT_COLUMNS,
    feature_dim_of,
    load_file,
    quantization_of,
    read_metadata,
)

__all__ = ['Prediction', 'Relocalizer', 'resolve_device', 'main']

# A raw quaternion norm below this means the network output no usable rotation.
MIN_RAW_QNORM = 1e-6
# Smallest shorter side (px) of a frame that gets a pose: a 1x1 or 4x4 image upsampled to the
# network's input holds no view of anything, yet would still get a confident-looking pose.
MIN_FRAME_SIDE = 16


def resolve_device(name: str) -> torch.device:
    """``'auto'`` (CUDA if present, else CPU), ``'cpu'``, ``'cuda'`` or ``'cuda:N'``."""
    text = str(name).strip().lower()
    if text == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if text == 'cpu':
        return torch.device('cpu')
    if text == 'cuda' or text.startswith('cuda:'):
        index = 0
        if text != 'cuda':
            try:
                index = int(text.split(':', 1)[1])
            except ValueError as exc:
                raise DeviceUnavailableError(
                    f'device {name!r} is not valid; use cpu, cuda, cuda:N or auto') from exc
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f'device {name!r} requested but CUDA is not available (torch '
                f'{torch.__version__}, CUDA build {torch.version.cuda}, no usable GPU/driver); '
                "use device 'cpu' or 'auto', or install a CUDA build of torch")
        if not 0 <= index < torch.cuda.device_count():
            raise DeviceUnavailableError(
                f'device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) '
                'exist; use cuda:0 or auto')
        return torch.device('cuda', index)
    raise DeviceUnavailableError(f'device {name!r} is not supported; use cpu, cuda, cuda:N or '
                                 'auto')


def _auto_device(path: Path) -> str:
    """``'auto'`` for ``path``: CUDA when present, except for int8 exports (CPU-only kernels)."""
    try:
        meta = read_metadata(path)
    except ModelFileError:
        return 'auto'  # load_file reports the problem with the file
    return 'cpu' if quantization_of(meta) is not None else 'auto'


@dataclass
class Prediction:
    """One frame's pose ``T_map_cam`` (see ``posenet_ros.core.geometry``).

    ``position`` (3,) float64, metres, camera centre in the map frame; ``quaternion_wxyz`` (4,)
    float64 unit camera-to-map rotation with w >= 0; ``raw_quat_norm``: norm of the network's
    quaternion before normalisation (out-of-distribution signal); ``latency_ms``: model time;
    ``feature`` (D,) float32: the retrieval feature of the same network pass (None for exports
    written before the export returned it).
    """

    position: np.ndarray
    quaternion_wxyz: np.ndarray
    raw_quat_norm: float
    latency_ms: float
    feature: np.ndarray | None = None


def _frame_error(what: str, got) -> InvalidFrameError:
    return InvalidFrameError(f'{what}, got {got}; pass RGB uint8 frames shaped (H, W, 3) '
                             '(convert BGR/mono/16-bit images first)')


def _check_frames(t: torch.Tensor, batch: bool) -> None:
    want = 4 if batch else 3
    layout = '(B, H, W, 3)' if batch else '(H, W, 3)'
    if t.dim() != want or t.shape[-1] != 3:
        raise _frame_error(f'expected a {layout} frame', f'shape {tuple(t.shape)}')
    if t.dtype != torch.uint8:
        raise _frame_error('expected dtype uint8', f'{t.dtype}')
    if t.numel() == 0:
        raise _frame_error('frame has zero size', f'shape {tuple(t.shape)}')
    h, w = int(t.shape[-3]), int(t.shape[-2])
    if min(h, w) < MIN_FRAME_SIDE:
        raise InvalidFrameError(
            f'frame is {w}x{h} px; frames need at least {MIN_FRAME_SIDE} px on the shorter side '
            '(below that nothing of a scene is left to relocalize from); check the camera driver '
            'or the image topic')


def _to_tensor(frames) -> torch.Tensor:
    if isinstance(frames, torch.Tensor):
        return frames
    if isinstance(frames, (list, tuple)):
        arrays = [np.asarray(f) for f in frames]
        if not arrays:
            raise _frame_error('expected at least one frame', 'an empty list')
        if len({a.shape for a in arrays}) != 1 or len({a.dtype for a in arrays}) != 1:
            raise _frame_error('frames of one batch must share shape and dtype',
                               sorted({(a.shape, str(a.dtype)) for a in arrays}))
        frames = np.stack(arrays)
    arr = np.asarray(frames)
    if arr.dtype == object:
        raise _frame_error('expected a numeric array', 'an object array')
    if arr.dtype.kind not in 'biuf':
        raise _frame_error('expected dtype uint8', f'{arr.dtype}')
    # negative strides (e.g. a BGR->RGB [..., ::-1] view) are not supported by from_numpy
    return torch.from_numpy(np.ascontiguousarray(arr))


def _split_output(out) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(pose (B, 8), feature (B, D) or None)`` of an export's output (see model.export)."""
    if isinstance(out, (tuple, list)):
        return out[0], out[1]
    return out, None  # an export written before the feature output


class Relocalizer:
    """An exported PoseNet ready to predict on ``device``.

    Loading validates the file (:class:`~posenet_ros.core.errors.ModelNotFoundError`,
    :class:`~posenet_ros.core.errors.CorruptModelError`,
    :class:`~posenet_ros.core.errors.IncompatibleModelError`) and runs ``warmup`` dummy frames of
    ``warmup_size`` (H, W) (default: ``resize x 4/3 resize``, a 4:3 camera) so the first real frame
    is not slow (TorchScript optimises during its first calls; CUDA initialises lazily).

    int8 exports (``posenet-ros quantize``) run on the CPU only: ``device='auto'`` picks the CPU
    for them and ``'cuda'`` raises :class:`~posenet_ros.core.errors.DeviceUnavailableError`.
    """

    def __init__(self, path: str | Path, device: str | torch.device = 'cpu', warmup: int = 3,
                 warmup_size: tuple[int, int] | None = None):
        self.path = Path(path)
        if not isinstance(device, torch.device) and str(device).strip().lower() == 'auto':
            device = _auto_device(self.path)
        self.device = (device if isinstance(device, torch.device)
                       else resolve_device(str(device)))
        self.model, self.metadata = load_file(self.path, self.device)
        self.model_id: str = str(self.metadata['model_id'])
        self.backbone: str = str(self.metadata['backbone'])
        self.format = self.path.suffix.lower().lstrip('.')
        # The metadata's quantization section for int8 exports, None for fp32 ones.
        self.quantization: dict | None = quantization_of(self.metadata)
        # The module as loaded, with its submodules (the evaluation's feature extractor reads
        # them); ``model`` is what inference runs.
        self.loaded_module = self.model
        if self.format == 'ts':
            # Inference only: freezing inlines weights and submodules (~10 % faster per frame on
            # the CPU, bit-identical outputs). torch 2.14 deprecates TorchScript in favour of
            # torch.export/torch.compile and warns on every freeze; the pinned torch still
            # supports it, and the warning would greet every node start (and every user of
            # this class), so it is silenced here, the one place an export is frozen.
            with warnings.catch_warnings():
                warnings.filterwarnings('ignore', message=r'.*torch\.jit\.freeze',
                                        category=FutureWarning)
                self.model = torch.jit.freeze(self.model)
        self._warm_up(warmup, warmup_size)

    def _warm_up(self, warmup: int, warmup_size: tuple[int, int] | None) -> None:
        """Run dummy frames; check the output layout and learn whether it has a feature."""
        resize = int(self.metadata['input']['resize'])
        h, w = warmup_size or (resize, (resize * 4) // 3)
        dummy = torch.full((1, int(h), int(w), 3), 127, dtype=torch.uint8, device=self.device)
        for i in range(max(1, int(warmup))):
            pose, feature = _split_output(self._run(dummy))
            if i == 0:
                self._check_output(pose, feature)
        # Length of the retrieval feature each prediction carries; 0: the export has none
        # (written before the export returned it: re-export to get retrieval back).
        self.feature_dim: int = 0 if feature is None else int(feature.shape[1])

    def _check_output(self, pose: torch.Tensor, feature: torch.Tensor | None) -> None:
        if tuple(pose.shape) != (1, len(OUTPUT_COLUMNS)):
            raise IncompatibleModelError(
                f'{self.path}: model output has shape {tuple(pose.shape)}, expected '
                f'(1, {len(OUTPUT_COLUMNS)}); re-export it with posenet_ros')
        want = feature_dim_of(self.metadata)
        got = None if feature is None else tuple(feature.shape)
        if feature is not None and (feature.dim() != 2 or feature.shape[0] != 1
                                    or (want is not None and feature.shape[1] != want)):
            raise IncompatibleModelError(
                f'{self.path}: model feature output has shape {got}, the metadata says '
                f'(1, {want}); re-export it with posenet_ros')
        if feature is None and want is not None:
            raise IncompatibleModelError(
                f'{self.path}: the metadata promises a {want}-d feature output but the model '
                'returns the pose only; re-export it with posenet_ros')

    def _run(self, batch: torch.Tensor):
        with torch.inference_mode():
            return self.model(batch)

    def _check_limits(self, batch: torch.Tensor) -> None:
        # A .pt2 program only accepts the dynamic-shape ranges it was exported with.
        if self.format != 'pt2':
            return
        ranges = self.metadata['input'].get('pt2_ranges', {})
        lo, hi = ranges.get('side', (1, 1 << 30))
        max_batch = ranges.get('batch', (1, 1 << 30))[1]
        h, w = int(batch.shape[1]), int(batch.shape[2])
        if not (lo <= h <= hi and lo <= w <= hi):
            raise _frame_error(f'this .pt2 model accepts frames of {lo}..{hi} px per side',
                               f'{h}x{w}')
        if batch.shape[0] > max_batch:
            raise _frame_error(f'this .pt2 model accepts batches of at most {max_batch}',
                               f'{batch.shape[0]} frames')

    def _infer(self, batch: torch.Tensor) -> list[Prediction]:
        self._check_limits(batch)
        if batch.device != self.device:
            batch = batch.to(self.device, non_blocking=True)
        t0 = time.perf_counter()
        out, feature = _split_output(self._run(batch))
        # .cpu() synchronises with the device: the latency covers the whole model.
        result = out.to('cpu', torch.float64).numpy()
        features = None if feature is None else feature.to('cpu', torch.float32).numpy()
        ms = (time.perf_counter() - t0) * 1000.0 / batch.shape[0]
        preds = []
        for i, row in enumerate(result):
            if not np.all(np.isfinite(row)):
                raise NonFiniteOutputError(
                    f'model {self.model_id} produced non-finite output for frame {i} '
                    f'({row.tolist()}); the weights may be corrupt (NaN) or the input extreme')
            if row[7] < MIN_RAW_QNORM:
                raise NonFiniteOutputError(
                    f'model {self.model_id} produced a degenerate quaternion (norm {row[7]:.3g}) '
                    f'for frame {i}; the frame is far outside the training distribution')
            preds.append(Prediction(row[:3].copy(), row[3:7].copy(), float(row[7]), ms,
                                    None if features is None else features[i]))
        return preds

    def predict(self, frame) -> Prediction:
        """Pose of one RGB ``uint8 (H, W, 3)`` frame (numpy array or torch tensor)."""
        t = _to_tensor(frame)
        _check_frames(t, batch=False)
        return self._infer(t.unsqueeze(0))[0]

    def predict_batch(self, frames) -> list[Prediction]:
        """Poses of ``(B, H, W, 3)`` uint8 frames (array, tensor or list of same-size frames).

        ``latency_ms`` of each prediction is the batch time divided by B.
        """
        t = _to_tensor(frames)
        _check_frames(t, batch=True)
        return self._infer(t)

    def predict_tensor(self, t: torch.Tensor) -> Prediction:
        """Pose of one uint8 ``(H, W, 3)`` (or ``(1, H, W, 3)``) tensor.

        Ideally already on :attr:`device` (e.g. copied from a pinned host buffer with
        ``non_blocking=True``); otherwise it is copied there.
        """
        if not isinstance(t, torch.Tensor):
            raise _frame_error('expected a torch.Tensor', type(t).__name__)
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        _check_frames(t, batch=False)
        return self._infer(t.unsqueeze(0))[0]


def _read_rgb(path: str) -> np.ndarray:
    import cv2

    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise InvalidFrameError(f'cannot read image {path!r} (missing or not an image file)')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def main(argv: Sequence[str] | None = None) -> int:
    """``posenet-ros predict MODEL IMAGE... [--device D]``: one line per image."""
    parser = argparse.ArgumentParser(
        prog='posenet-ros predict',
        description='Predict the camera pose T_map_cam of image files with an exported model. '
                    'Prints: image x y z qw qx qy qz (metres, wxyz camera-to-map) raw_qnorm ms')
    parser.add_argument('model', help='exported model (.ts or .pt2)')
    parser.add_argument('images', nargs='+', help='image files (any OpenCV-readable format)')
    parser.add_argument('--device', default='cpu', help='cpu, cuda, cuda:N or auto (default cpu)')
    parser.add_argument('--warmup', type=int, default=1, help='warm-up runs (default 1)')
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    reloc = Relocalizer(args.model, device=args.device, warmup=args.warmup)
    print(f'# model {reloc.model_id} ({reloc.backbone}, {reloc.format}) on {reloc.device}; '
          'columns: image x y z qw qx qy qz raw_qnorm ms')
    failed = 0
    for image in args.images:
        try:
            p = reloc.predict(_read_rgb(image))
        except PoseNetError as exc:
            print(f'{image}: error: {exc}', file=sys.stderr)
            failed += 1
            continue
        x, y, z = p.position
        qw, qx, qy, qz = p.quaternion_wxyz
        print(f'{image} {x:.4f} {y:.4f} {z:.4f} {qw:.6f} {qx:.6f} {qy:.6f} {qz:.6f} '
              f'{p.raw_quat_norm:.4f} {p.latency_ms:.1f}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
