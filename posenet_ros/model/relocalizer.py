"""Load an exported PoseNet (``.ts`` / ``.pt2``) and predict camera poses. No ROS needed.

>>> reloc = Relocalizer('models/scene.ts', device='auto')
>>> pred = reloc.predict(rgb_uint8_hxwx3)
>>> pred.position, pred.quaternion_wxyz   # T_map_cam: camera centre, camera-to-map rotation

With a scene map (``posenet-ros map``), :meth:`Relocalizer.relocalize` also verifies and refines
the pose (see ``posenet_ros.verify`` and ``docs/verification.md``):

>>> reloc = Relocalizer('models/scene.ts', scene_map='models/scene.map.npz')
>>> result = reloc.relocalize(rgb_uint8_hxwx3, K)   # K: 3x3 intrinsics of this frame
>>> result.coarse.position, result.verification.status, result.verification.position

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
from posenet_ros.model.export import OUTPUT_COLUMNS, load_file, quantization_of, read_metadata

__all__ = ['Prediction', 'Relocalization', 'Relocalizer', 'resolve_device', 'main']

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
    quaternion before normalisation (out-of-distribution signal); ``latency_ms``: model time.
    """

    position: np.ndarray
    quaternion_wxyz: np.ndarray
    raw_quat_norm: float
    latency_ms: float


@dataclass
class Relocalization:
    """A coarse PoseNet prediction and its verification against the scene map.

    ``verification`` is a :class:`posenet_ros.verify.Verification`: ``status`` ``verified``
    (use ``verification.position`` / ``quaternion_wxyz`` / ``covariance``), ``unverified``
    (only the coarse pose, unconfirmed) or ``rejected``; ``reason`` says why.
    """

    coarse: Prediction
    verification: object
    global_feature_ms: float = 0.0


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
                 warmup_size: tuple[int, int] | None = None, scene_map=None,
                 verifier_config=None):
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
        resize = int(self.metadata['input']['resize'])
        h, w = warmup_size or (resize, (resize * 4) // 3)
        dummy = torch.full((1, int(h), int(w), 3), 127, dtype=torch.uint8, device=self.device)
        for i in range(max(1, int(warmup))):
            out = self._run(dummy)
            if i == 0 and tuple(out.shape) != (1, len(OUTPUT_COLUMNS)):
                raise IncompatibleModelError(
                    f'{self.path}: model output has shape {tuple(out.shape)}, expected '
                    f'(1, {len(OUTPUT_COLUMNS)}); re-export it with posenet_ros')
        self.localizer = None
        self._global = None
        if scene_map is not None:
            self.attach_map(scene_map, verifier_config)

    def attach_map(self, scene_map, config=None) -> None:
        """Use ``scene_map`` (a path or :class:`~posenet_ros.verify.SceneMap`) to verify poses.

        Raises a :class:`~posenet_ros.core.errors.MapError` subclass when the file is missing,
        corrupt, of another version, or built for another model id.
        """
        from posenet_ros.verify import MapLocalizer, SceneMap, load_map

        if not isinstance(scene_map, SceneMap):
            scene_map = load_map(scene_map)
        scene_map.check_model(self.model_id, self.path)
        self.localizer = MapLocalizer(scene_map, config)
        self._global = None
        if scene_map.frame_global.size and self.quantization is None:
            from posenet_ros.evaluation.baselines import network_feature_extractor

            module = self.loaded_module if self.format == 'ts' else None
            self._global = network_feature_extractor(self.path, str(self.device), module)

    def global_feature(self, frame) -> np.ndarray | None:
        """The network's retrieval feature (D,) of one frame, or None without a map/features."""
        if self._global is None:
            return None
        return self._global([np.asarray(frame)])[0]

    def verify(self, frame, K=None, position=None, quaternion_wxyz=None):
        """Verify one frame against the attached map near a pose; a ``Verification``.

        The one verification call of ``relocalize``, offline evaluation and the node: the
        network's retrieval feature of ``frame``, then ``MapLocalizer.localize`` with the k map
        frames nearest ``position`` / ``quaternion_wxyz`` (the coarse pose or a prior) and the
        nearest in feature space. ``K``: 3x3 intrinsics (default: the map's, scaled).
        """
        from posenet_ros.core.errors import MapError

        if self.localizer is None:
            raise MapError('no scene map attached; pass scene_map= (build one with '
                           "'posenet-ros map --model MODEL')")
        frame = np.asarray(frame)
        return self.localizer.localize(frame, K, position, quaternion_wxyz,
                                       self.global_feature(frame))

    def relocalize(self, frame, K=None, prior=None) -> Relocalization:
        """Coarse pose plus its verification/refinement against the attached map.

        ``K``: 3x3 intrinsics of ``frame`` (default: the map's, scaled to the frame size).
        ``prior``: optional ``(position, quaternion_wxyz)`` used instead of the coarse pose to
        choose candidate map frames (e.g. the last verified pose).
        """
        from posenet_ros.core.errors import MapError

        if self.localizer is None:
            raise MapError('no scene map attached; pass scene_map= (build one with '
                           "'posenet-ros map --model MODEL')")
        frame = np.asarray(frame)
        coarse = self.predict(frame)
        p, q = prior if prior is not None else (coarse.position, coarse.quaternion_wxyz)
        t0 = time.perf_counter()
        ver = self.verify(frame, K, p, q)
        # what verify spent outside localize is the network feature pass
        g_ms = (time.perf_counter() - t0) * 1e3 - ver.ms.get('total', 0.0)
        return Relocalization(coarse, ver, g_ms)

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
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
        out = self._run(batch)
        # .cpu() synchronises with the device: the latency covers the whole model.
        result = out.to('cpu', torch.float64).numpy()
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
            preds.append(Prediction(row[:3].copy(), row[3:7].copy(), float(row[7]), ms))
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
