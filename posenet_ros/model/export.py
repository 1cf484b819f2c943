"""Self-describing model export: TorchScript (``.ts``) and ``torch.export`` (``.pt2``).

Both files hold :class:`ExportedPoseNet`, i.e. the whole inference path, so a consumer needs
nothing but the file:

* input ``uint8 (B, H, W, 3)`` RGB, any batch size, height and width;
* output a tuple ``(pose, feature)`` from one network pass:

  - ``pose`` ``float32 (B, 8)`` = ``[x, y, z, qw, qx, qy, qz, raw_qnorm]``: the camera centre in
    the map frame (metres, de-normalised with the stored ``pos_mean``/``pos_scale``), the unit
    camera-to-map quaternion (wxyz, canonical ``w >= 0``) and the norm of the raw quaternion
    before normalisation (out-of-distribution signal: far from the ~1 seen in training means
    the network is unsure);
  - ``feature`` ``float32 (B, D)``: the retrieval feature (``relu(fc)`` of the pooled trunk
    features, what the pose regressors read; compared by cosine), used to pick scene-map
    frames for verification;

* metadata JSON inside the file under ``posenet_meta.json`` (see :func:`build_metadata`); its
  ``output_convention.feature`` section says which features the export returns. Exports
  written before the feature output existed return the pose tensor alone and have no such
  section: they still load, and verification then picks map frames by the coarse pose only.

The ``.pt2`` is exported with dynamic batch (1..1024), height and width (8..8192 px each).
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import os
import subprocess
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from posenet_ros.core.atomic import atomic_path
from posenet_ros.core.errors import (
    ConfigError,
    CorruptModelError,
    DeviceUnavailableError,
    IncompatibleModelError,
    ModelFileError,
    ModelNotFoundError,
)
from posenet_ros.model.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocess

__all__ = [
    'FORMAT_VERSION', 'META_NAME', 'ExportedPoseNet', 'ExportResult', 'build_metadata',
    'export_model', 'read_metadata', 'model_id_of', 'git_sha', 'OUTPUT_COLUMNS',
    'MAX_BATCH', 'MIN_SIDE', 'MAX_SIDE', 'save_torchscript', 'quantization_of',
    'check_quantized_device', 'eager_network', 'FEATURE_SPACE', 'feature_dim_of',
]

FORMAT_VERSION = 1
META_NAME = 'posenet_meta.json'
OUTPUT_COLUMNS = ('x', 'y', 'z', 'qw', 'qx', 'qy', 'qz', 'raw_qnorm')
# Dynamic-shape ranges of the .pt2 (torch.export checks them at call time).
MAX_BATCH = 1024
MIN_SIDE = 8
MAX_SIDE = 8192
# What the export's second output is (stored in the metadata; the map records it too).
FEATURE_SPACE = 'relu(head.fc) of globally pooled trunk features (cosine)'


class ExportedPoseNet(nn.Module):
    """Preprocess + PoseNet (eval) + de-normalisation + quaternion normalisation.

    ``forward(frames uint8 (B, H, W, 3) RGB) -> (pose float32 (B, 8), feature float32 (B, D))``,
    see the module docstring. ``net`` has PoseNet's ``forward_with_feature`` (a
    :class:`~posenet_ros.model.network.PoseNet`, or the int8 network of ``model.quantize``).
    """

    def __init__(self, net: nn.Module, resize: int, crop: int,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 pos_mean: Sequence[float] = (0.0, 0.0, 0.0), pos_scale: float = 1.0):
        super().__init__()
        self.preprocess = Preprocess(resize, crop, mean, std)
        self.net = net
        pm = torch.as_tensor(pos_mean, dtype=torch.float32).reshape(-1)
        if pm.numel() != 3 or not bool(torch.isfinite(pm).all()):
            raise ConfigError(f'pos_mean must be 3 finite numbers, got {pm.tolist()}')
        if not (float(pos_scale) > 0 and torch.isfinite(torch.tensor(float(pos_scale)))):
            raise ConfigError(f'pos_scale must be a positive finite number, got {pos_scale}')
        self.register_buffer('pos_mean', pm.reshape(1, 3))
        self.register_buffer('pos_scale', torch.tensor(float(pos_scale)))

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pose and retrieval feature of each frame; see the class docstring."""
        raw, feature = self.net.forward_with_feature(self.preprocess(frames))
        position = raw[:, :3] * self.pos_scale + self.pos_mean
        q = raw[:, 3:7]
        norm = torch.linalg.vector_norm(q, dim=1, keepdim=True)
        q = q / norm.clamp_min(1e-12)
        # q and -q are the same rotation: report the w >= 0 hemisphere (the label convention).
        sign = torch.where(q[:, :1] < 0, -torch.ones_like(norm), torch.ones_like(norm))
        return torch.cat([position, q * sign, norm], dim=1), feature.float()


@dataclass
class ExportResult:
    """Paths written by :func:`export_model` and the metadata stored in both."""

    ts_path: Path
    pt2_path: Path | None
    metadata: dict


def git_sha(cwd: str | os.PathLike | None = None) -> str | None:
    """Current git commit of the posenet_ros source tree (best effort, ``None`` if unknown)."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=cwd, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def _hash_state(h, value) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().to('cpu')
        if t.is_quantized:
            # int8 models (posenet_ros.model.quantize): the integer values plus their quantisation
            h.update(str(t.qscheme()).encode())
            if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                h.update(str(t.q_per_channel_axis()).encode())
                _hash_state(h, t.q_per_channel_scales())
                _hash_state(h, t.q_per_channel_zero_points())
            else:
                h.update(repr((t.q_scale(), t.q_zero_point())).encode())
            h.update(str(t.dtype).encode())
            t = t.int_repr()
        else:
            h.update(str(t.dtype).encode())
        t = t.contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b'')
    elif isinstance(value, (tuple, list)):
        for v in value:
            _hash_state(h, v)
    else:  # e.g. the dtype entry of a quantized Linear's packed parameters
        h.update(repr(value).encode())


def model_id_of(module: nn.Module, backbone: str) -> str:
    """Short, stable hash of the backbone name and every tensor of ``module``'s state_dict."""
    h = hashlib.sha256(backbone.encode())
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        _hash_state(h, value)
    return h.hexdigest()[:12]


def build_metadata(*, backbone: str, resize: int, crop: int, mean: Sequence[float],
                   std: Sequence[float], pos_mean: Sequence[float], pos_scale: float,
                   model_id: str, map_frame: str = 'map', camera_frame: str = 'camera_optical',
                   training: dict | None = None, config: dict | None = None,
                   dynamic_input: bool = True, feature_dim: int | None = None) -> dict:
    """The metadata document stored in every export (``format_version`` 1).

    ``feature_dim``: length D of the export's retrieval feature output (default: the pose
    head's hidden size).
    """
    if feature_dim is None:
        from posenet_ros.model.network import HIDDEN  # torchvision: only when needed
        feature_dim = HIDDEN
    return {
        'format_version': FORMAT_VERSION,
        'backbone': backbone,
        'input': {
            'dtype': 'uint8', 'layout': 'BHWC', 'color': 'rgb',
            'resize': int(resize), 'crop': int(crop),
            'mean': [float(v) for v in mean], 'std': [float(v) for v in std],
            'resize_mode': 'shorter side, bilinear antialias; centre crop',
            'dynamic_hw': bool(dynamic_input),
            'pt2_ranges': {'batch': [1, MAX_BATCH], 'side': [MIN_SIDE, MAX_SIDE]},
        },
        'position_normalization': {'mean': [float(v) for v in pos_mean],
                                   'scale': float(pos_scale),
                                   'formula': 'position = raw * scale + mean'},
        'output_convention': {
            'columns': list(OUTPUT_COLUMNS),
            'pose': 'T_map_cam: X_map = R(q) X_cam + position',
            'position': 'camera centre in map frame, metres',
            'quaternion': 'camera-to-map rotation, wxyz, unit, w >= 0',
            'raw_qnorm': 'norm of the raw quaternion before normalisation',
            'outputs': ['pose', 'feature'],
            'feature': {'dim': int(feature_dim), 'space': FEATURE_SPACE},
        },
        'frames': {'map_frame': map_frame, 'camera_frame': camera_frame},
        'training': dict(training or {}),
        'model_id': model_id,
        'config': dict(config or {}),
        'git_sha': git_sha(),
        'torch_version': torch.__version__,
        'created': _dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds'),
    }


def _atomic_write(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def _meta_bytes(meta: dict) -> bytes:
    try:
        return json.dumps(meta, indent=1, sort_keys=True).encode()
    except TypeError as exc:
        raise ConfigError(f'training/config metadata must be JSON-serialisable: {exc}') from exc


def save_torchscript(module: nn.Module, path: str | os.PathLike, meta: dict) -> Path:
    """Script ``module`` (an :class:`ExportedPoseNet`) and write it atomically with ``meta``.

    The metadata is stored inside the file as ``extra_files['posenet_meta.json']``. Submodules
    may already be TorchScript (e.g. the traced int8 network of ``posenet_ros.model.quantize``).
    """
    path = Path(path)
    meta_bytes = _meta_bytes(meta)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit deprecation notice
        scripted = torch.jit.script(module)
        _atomic_write(path, lambda p: torch.jit.save(scripted, str(p),
                                                      _extra_files={META_NAME: meta_bytes}))
    return path


def export_model(net: nn.Module, *, out_dir: str | os.PathLike, name: str, resize: int,
                 crop: int, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, pos_mean: Sequence[float] = (0, 0, 0),
                 pos_scale: float = 1.0, map_frame: str = 'map',
                 camera_frame: str = 'camera_optical', training: dict | None = None,
                 config: dict | None = None, pt2: bool = True) -> ExportResult:
    """Write ``<out_dir>/<name>.ts`` and ``<out_dir>/<name>.pt2`` (unless ``pt2=False``).

    ``net`` is a :class:`~posenet_ros.model.network.PoseNet` (copied to the CPU in eval mode; the
    caller's module is not modified). ``training``/``config`` are JSON-serialisable summaries.
    Files are written atomically (temporary file + ``os.replace``).
    """
    backbone = getattr(net, 'backbone_name', type(net).__name__)
    module = ExportedPoseNet(copy.deepcopy(net).to('cpu').float(), resize, crop, mean, std,
                             pos_mean, pos_scale).eval()
    meta = build_metadata(backbone=backbone, resize=resize, crop=crop, mean=mean, std=std,
                          pos_mean=module.pos_mean.reshape(-1).tolist(),
                          pos_scale=float(module.pos_scale), model_id=model_id_of(module,
                                                                                   backbone),
                          map_frame=map_frame, camera_frame=camera_frame, training=training,
                          config=config)
    meta_bytes = _meta_bytes(meta)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ts_path = out / f'{name}.ts'
    pt2_path = out / f'{name}.pt2'
    save_torchscript(module, ts_path, meta)
    if not pt2:
        return ExportResult(ts_path, None, meta)
    batch = torch.export.Dim('batch', min=1, max=MAX_BATCH)
    height = torch.export.Dim('height', min=MIN_SIDE, max=MAX_SIDE)
    width = torch.export.Dim('width', min=MIN_SIDE, max=MAX_SIDE)
    # Example of batch 2 and non-square size so nothing specialises on 1 or on H == W.
    example = torch.zeros(2, resize + 3, resize + 17, 3, dtype=torch.uint8)
    with torch.no_grad():
        program = torch.export.export(
            module, (example,), dynamic_shapes={'frames': {0: batch, 1: height, 2: width}})
    _atomic_write(pt2_path, lambda p: torch.export.save(
        program, str(p), extra_files={META_NAME: meta_bytes.decode()}))
    return ExportResult(ts_path, pt2_path, meta)


REQUIRED_KEYS = ('format_version', 'backbone', 'input', 'position_normalization',
                 'output_convention', 'frames', 'model_id')


def validate_metadata(meta: object, path: str | os.PathLike = '<metadata>') -> dict:
    """Check a metadata document; raise :class:`IncompatibleModelError` if unusable."""
    if not isinstance(meta, dict):
        raise IncompatibleModelError(f'{path}: metadata is not a JSON object')
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise IncompatibleModelError(f'{path}: metadata lacks {missing}; re-export the model '
                                     'with this version of posenet_ros (posenet-ros train)')
    if meta['format_version'] != FORMAT_VERSION:
        raise IncompatibleModelError(
            f'{path}: export format_version {meta["format_version"]!r} is not supported (this '
            f'posenet_ros reads version {FORMAT_VERSION}); re-export the model with this '
            'version or install the posenet_ros release that wrote it')
    inp = meta['input']
    if not isinstance(inp, dict) or not all(k in inp for k in ('resize', 'crop', 'mean', 'std')):
        raise IncompatibleModelError(f'{path}: metadata input section is incomplete: {inp!r}')
    return meta


def _parse_meta(raw: bytes | str, path: Path) -> dict:
    if not raw:
        raise IncompatibleModelError(
            f'{path} has no {META_NAME} metadata: it was not written by posenet_ros export; '
            're-export it with posenet_ros.model.export.export_model')
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IncompatibleModelError(f'{path}: metadata is not valid JSON ({exc})') from exc
    return validate_metadata(meta, path)


def feature_dim_of(meta: dict) -> int | None:
    """Length of an export's retrieval feature output; ``None`` for exports without one."""
    feature = (meta.get('output_convention') or {}).get('feature')
    return int(feature['dim']) if isinstance(feature, dict) and 'dim' in feature else None


def quantization_of(meta: dict) -> dict | None:
    """The ``quantization`` section of an int8 export's metadata, ``None`` for fp32 exports."""
    q = meta.get('quantization')
    return q if isinstance(q, dict) and q else None


def check_quantized_device(meta: dict, device: str | torch.device,
                           path: str | os.PathLike = '<model>') -> None:
    """Make an int8 export loadable: CPU only, and select its quantized engine.

    Quantized (int8) TorchScript kernels exist only on the CPU, and their packed weights are
    unpacked for ``torch.backends.quantized.engine`` when the file is loaded, so the engine the
    model was calibrated for (``x86``) is set before loading. Raises
    :class:`DeviceUnavailableError` for a non-CPU device and :class:`IncompatibleModelError`
    when this torch build lacks the engine. No-op for fp32 exports.
    """
    q = quantization_of(meta)
    if q is None:
        return
    device = torch.device(device)
    if device.type != 'cpu':
        raise DeviceUnavailableError(
            f'{path} is an int8-quantized model ({q.get("engine")} engine), which runs on the '
            f'CPU only, but device {str(device)!r} was requested; use device cpu (or auto), or '
            'load the fp32 export it was made from (the same name without .int8) on the GPU')
    engine = str(q.get('engine', 'x86'))
    supported = torch.backends.quantized.supported_engines
    if engine not in supported:
        raise IncompatibleModelError(
            f'{path} is an int8 model for the {engine!r} quantized engine, which this torch '
            f'build does not provide (it has {supported}); use the fp32 export on this machine')
    if torch.backends.quantized.engine != engine:
        torch.backends.quantized.engine = engine


def _prepare_quantized_load(path: Path, device: torch.device) -> None:
    try:
        meta = read_metadata(path)
    except ModelFileError:
        return  # not a readable export: torch.jit.load / _parse_meta report it precisely
    check_quantized_device(meta, device, path)


def eager_network(state: dict, backbone: str, path: str | os.PathLike = '<model>') -> nn.Module:
    """The eager PoseNet (eval mode) with an export's weights, ``state`` = its ``net`` state_dict.

    TorchScript's state_dict also lists non-persistent buffers (the input remap's constants of
    googlenet / efficientnet_lite0), which the eager module recomputes: those keys are dropped,
    everything else must match (:class:`IncompatibleModelError` otherwise).
    """
    from posenet_ros.model.network import build_posenet  # torchvision: only when needed

    net = build_posenet(backbone).eval()
    own = net.state_dict()
    try:
        net.load_state_dict({k: v for k, v in state.items() if k in own})
    except RuntimeError as exc:
        raise IncompatibleModelError(f'{path}: its weights do not fit a {backbone} '
                                     f'PoseNet of this posenet_ros ({exc}); re-export it') from exc
    extra = sorted(set(state) - set(own))
    if any(not k.endswith(('remap.scale', 'remap.shift')) for k in extra):
        raise IncompatibleModelError(f'{path}: unexpected weights {extra[:3]} for a '
                                     f'{backbone} PoseNet; re-export it with posenet-ros train')
    return net


def load_file(path: str | os.PathLike, device: str | torch.device = 'cpu'):
    """Load an export: returns ``(callable module, metadata)``; ``.ts`` or ``.pt2`` by suffix.

    Raises :class:`ModelNotFoundError`, :class:`CorruptModelError` or
    :class:`IncompatibleModelError`; an int8 export (``posenet_ros.model.quantize``) on a non-CPU
    device raises :class:`DeviceUnavailableError` (see :func:`check_quantized_device`).
    """
    path = Path(path)
    device = torch.device(device)
    if not path.is_file():
        raise ModelNotFoundError(f'model file {path} does not exist; export one with '
                                 "'posenet-ros train' or pass the right path")
    suffix = path.suffix.lower()
    if suffix not in ('.ts', '.pt2'):
        raise CorruptModelError(f'{path}: unknown model suffix {path.suffix!r}; expected a '
                                '.ts (TorchScript) or .pt2 (torch.export) file')
    if suffix == '.ts':
        _prepare_quantized_load(path, device)
        extra = {META_NAME: ''}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', FutureWarning)
                module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError/ValueError/...
            raise CorruptModelError(
                f'{path} cannot be loaded as TorchScript ({exc}); the file is truncated or not '
                'a model: re-copy or re-export it') from exc
        meta = _parse_meta(extra[META_NAME], path)
        module.eval()
        return module, meta
    extra = {META_NAME: ''}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:  # noqa: BLE001
        raise CorruptModelError(f'{path} cannot be loaded as a torch.export program ({exc}); '
                                'the file is truncated or not a model: re-copy or re-export '
                                'it') from exc
    meta = _parse_meta(extra[META_NAME], path)
    if device.type != 'cpu':
        from torch.export.passes import move_to_device_pass
        program = move_to_device_pass(program, device)
    return program.module(), meta


def read_metadata(path: str | os.PathLike) -> dict:
    """Metadata of an exported ``.ts`` / ``.pt2`` file (validated), without loading the model.

    Both formats are zip archives holding ``<archive>/extra/posenet_meta.json``.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f'model file {path} does not exist')
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith(f'/extra/{META_NAME}')]
            raw = zf.read(names[0]) if names else b''
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CorruptModelError(f'{path} is not a model archive ({exc}); the file is truncated '
                                'or not a model: re-copy or re-export it') from exc
    return _parse_meta(raw, path)
