"""int8 post-training static quantization of an exported PoseNet for CPU inference.

``quantize_export('models/scene.ts', 'data/scene')`` writes ``models/scene.int8.ts``: the same
export contract (uint8 RGB frames in, ``(B, 8)`` poses and ``(B, D)`` retrieval features out from
one pass, same preprocessing, de-normalisation
and quaternion normalisation, metadata inside the file) with the network in int8. Any consumer
of ``.ts`` exports (:class:`~posenet_ros.model.relocalizer.Relocalizer`, hence the node) loads it
unchanged; it runs on the CPU only (``torch.backends.quantized`` kernels), which the loader
enforces with a clear error.

How: the eager PoseNet is rebuilt from the fp32 export's ``net`` state_dict
(:func:`~posenet_ros.model.export.eager_network`),
quantized with ``torch.ao.quantization.quantize_fx``
(``prepare_fx`` / ``convert_fx``, ``get_default_qconfig_mapping('x86')``: per-channel symmetric
int8 weights, per-tensor affine uint8 activations with histogram observers), calibrated on
dataset frames preprocessed by the export's own ``preprocess`` submodule, traced, wrapped in the
export's :class:`~posenet_ros.model.export.ExportedPoseNet` and scripted. The GoogLeNet /
EfficientNet-Lite input remap stays in fp32; the pose regressors (``head.fc_xyz`` /
``head.fc_wpqr``) are int8 too unless ``fp32_head`` (keeping them in fp32 made no measurable
difference on the synthetic scene, see ``docs/quantization.md``).

torch 2.14 marks ``torch.ao.quantization`` deprecated (in favour of torchao's pt2e flow, which
needs inductor compilation to be fast and cannot be saved as TorchScript); the FX flow still
works in the pinned torch and its deprecation warning is silenced where it is called.

Command line: ``posenet-ros quantize MODEL.ts --dataset DS [--split train] [--frames N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from posenet_ros.core.errors import (
    ConfigError,
    CorruptModelError,
    DatasetError,
    IncompatibleModelError,
)
from posenet_ros.model.export import (
    ExportedPoseNet,
    eager_network,
    git_sha,
    load_file,
    model_id_of,
    quantization_of,
    save_torchscript,
)

__all__ = [
    'SCHEME', 'ENGINE', 'DEFAULT_FRAMES', 'QuantizeResult', 'quantize_export',
    'quantize_network', 'calibration_frames', 'Int8PoseAndFeature', 'static_same_padding',
    'clip_relu6_observers', 'compare_models', 'main',
]

SCHEME = 'fx-ptq-static-int8'
ENGINE = 'x86'
DEFAULT_FRAMES = 64
# Always fp32: the input remap of GoogLeNet / EfficientNet-Lite (an affine map of the normalised
# input; in int8 its per-channel constants would be rounded to one shared 8-bit scale). The pose
# regressors only with ``fp32_head``.
FP32_HEAD = ('head.fc_xyz', 'head.fc_wpqr')
FP32_ALWAYS = ('trunk.remap',)
# Message of the deprecation warning torch.ao.quantization's FX entry points emit, and the
# notices its observers / quantized tensor constructors print (same deprecated API).
_DEPRECATION = 'torch.ao.quantization is deprecated'
_NOTICES = ('Please use quant_min and quant_max', 'torch.quantize_per_tensor, ')


@dataclass
class QuantizeResult:
    """What :func:`quantize_export` wrote."""

    path: Path
    metadata: dict
    n_calibration: int


class Int8PoseAndFeature(nn.Module):
    """The traced int8 network inside an int8 export, with PoseNet's two inference entries.

    ``pair`` maps a preprocessed batch to ``(raw pose (B, 7), feature (B, D))`` (one pass).
    """

    def __init__(self, pair: nn.Module):
        super().__init__()
        self.pair = pair

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw ``(B, 7)`` pose."""
        return self.pair(x)[0]

    def forward_with_feature(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(raw pose (B, 7), feature (B, D))``."""
        pose, feature = self.pair(x)
        return pose, feature


class _Shift(nn.Module):
    """Shift a feature map by whole pixels up/left, filling with zeros (negative padding)."""

    def __init__(self, rows: int, cols: int):
        super().__init__()
        self.pad = (-cols, cols, -rows, rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x, self.pad)


def static_same_padding(net: nn.Module, crop: int) -> nn.Module:
    """Replace EfficientNet-Lite's dynamic TF 'SAME' convolutions by static ones (in place).

    ``_SameConv2d`` computes its padding from the input size at run time, which FX cannot trace;
    inside an export the network input is always ``crop x crop``, so each one is replaced by an
    exactly equivalent ``nn.Conv2d`` with symmetric padding ``(k - 1) // 2`` (the padding the
    int8 depthwise kernels have fast paths for; an explicit zero pad made them ~30x slower),
    preceded, where SAME pads less at the top/left than at the bottom/right (stride 2, even
    size), by a one-pixel :class:`_Shift`. Networks without ``_SameConv2d`` are returned as is.
    """
    from posenet_ros.model.network import _SameConv2d

    sizes: dict[str, tuple[int, int]] = {}
    hooks = []
    for name, mod in net.named_modules():
        if isinstance(mod, _SameConv2d):
            hooks.append(mod.register_forward_pre_hook(
                lambda _m, inp, name=name: sizes.__setitem__(name, tuple(inp[0].shape[-2:]))))
    if not hooks:
        return net
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, int(crop), int(crop)))
    finally:
        for h in hooks:
            h.remove()
    for name, (ih, iw) in sizes.items():
        mod = net.get_submodule(name)
        kh, kw = mod.kernel_size
        sh, sw = mod.stride
        if kh % 2 == 0 or kw % 2 == 0:
            raise ConfigError(f'{name}: even kernel {mod.kernel_size} has no static SAME form')
        pad_h = max(((ih + sh - 1) // sh - 1) * sh + kh - ih, 0)
        pad_w = max(((iw + sw - 1) // sw - 1) * sw + kw - iw, 0)
        sym_h, sym_w = (kh - 1) // 2, (kw - 1) // 2
        conv = nn.Conv2d(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride,
                         (sym_h, sym_w), groups=mod.groups, bias=mod.bias is not None)
        conv.weight = mod.weight
        if mod.bias is not None:
            conv.bias = mod.bias
        shift = (sym_h - pad_h // 2, sym_w - pad_w // 2)
        new = conv if shift == (0, 0) else nn.Sequential(_Shift(*shift), conv)
        parent_name, _, attr = name.rpartition('.')
        setattr(net.get_submodule(parent_name) if parent_name else net, attr,
                new.train(mod.training))
    return net


def _is_relu6(node, modules: dict) -> bool:
    if node.op == 'call_module':
        mod = modules.get(node.target)
        return isinstance(mod, nn.ReLU6) or (isinstance(mod, nn.Hardtanh)
                                             and (mod.min_val, mod.max_val) == (0.0, 6.0))
    return node.op == 'call_function' and node.target is nn.functional.relu6


def clip_relu6_observers(prepared) -> int:
    """After calibration: quantize the input and output of every ReLU6 over ``[0, <= 6]``.

    FX fuses conv + bn + ReLU but not ReLU6, so the observer before a ReLU6 sees the raw conv
    output, negative half and outliers included (about [-23, 23] in EfficientNet-Lite's first
    blocks), and the ReLU6 output shares that observer: its [0, 6] values got a few dozen int8
    levels. Giving the tensor before and after each ReLU6 the range ``[0, min(6, observed
    max)]`` makes the int8 rounding itself apply the ReLU6 (values saturate at both ends) at
    full resolution (demo model: median int8-vs-fp32 difference 1.07 m -> 0.61 m). Returns how
    many observers were replaced.
    """
    from torch.ao.quantization.observer import MinMaxObserver, ObserverBase

    # (not deduplicated: a ReLU6's output observer is its input observer's instance)
    modules = dict(prepared.named_modules(remove_duplicate=False))
    count = 0
    for node in prepared.graph.nodes:
        if not _is_relu6(node, modules) or not node.args:
            continue
        obs_nodes = [node.args[0]] + [u for u in node.users]
        obs_nodes = [n for n in obs_nodes if n.op == 'call_module'
                     and isinstance(modules.get(n.target), ObserverBase)]
        for obs_node in obs_nodes:
            old = modules[obs_node.target]
            hi = float(getattr(old, 'max_val', torch.tensor(6.0)))
            if not (hi > 0.0):
                continue
            new = MinMaxObserver(dtype=old.dtype, qscheme=torch.per_tensor_affine,
                                 reduce_range=bool(getattr(old, 'reduce_range', False)),
                                 quant_min=old.quant_min, quant_max=old.quant_max)
            new(torch.tensor([0.0, min(6.0, hi)]))
            setattr(prepared, obs_node.target, new)
            modules[obs_node.target] = new
            count += 1
    return count


@contextlib.contextmanager
def _quiet():
    """Silence the deprecation notices of torch.ao.quantization's FX flow (still works)."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=_DEPRECATION, category=DeprecationWarning)
        for text in _NOTICES:
            warnings.filterwarnings('ignore', message=text, category=UserWarning)
        # tracing the int8 graph reads each op's scale as a float: constants, as intended
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        yield


def _fx():
    """The FX quantization entry points, imported with their deprecation warning silenced."""
    with _quiet():
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    return get_default_qconfig_mapping, prepare_fx, convert_fx


def _feature_side(net: nn.Module, crop: int) -> int | None:
    """Smallest side of the trunk's feature map at ``crop x crop`` input (None: no trunk)."""
    trunk = getattr(net, 'trunk', None)
    if trunk is None:
        return None
    with torch.no_grad():
        feats = trunk(torch.zeros(1, 3, int(crop), int(crop)))
    return int(min(feats.shape[-2:]))


def quantize_network(net: nn.Module, calibration: Sequence[torch.Tensor] | torch.Tensor,
                     crop: int, fp32_head: bool = False, engine: str = ENGINE) -> nn.Module:
    """Post-training static int8 quantization of an eager PoseNet (a quantized copy).

    ``calibration``: normalised ``float32 (B, 3, crop, crop)`` batches (the export's
    preprocessing output). Returns the converted FX ``GraphModule`` (eval mode, CPU) of
    :class:`~posenet_ros.model.network.PoseAndFeature`: ``x -> (raw pose (B, 7), feature)``.
    """
    from posenet_ros.model.network import PoseAndFeature

    get_mapping, prepare_fx, convert_fx = _fx()
    if engine not in torch.backends.quantized.supported_engines:
        raise ConfigError(f'quantized engine {engine!r} is not available in this torch build '
                          f'(it has {torch.backends.quantized.supported_engines})')
    torch.backends.quantized.engine = engine
    batches = [calibration] if isinstance(calibration, torch.Tensor) else list(calibration)
    if not batches or sum(int(b.shape[0]) for b in batches) == 0:
        raise ConfigError('quantization needs at least one calibration frame')
    net = static_same_padding(copy.deepcopy(net).to('cpu').float().eval(), crop)
    if hasattr(net, 'forward_with_feature'):
        net = PoseAndFeature(net)  # FX follows forward: quantize the pose-and-feature pass
    mapping = get_mapping(engine)
    skip = FP32_ALWAYS + (FP32_HEAD if fp32_head else ())
    if _feature_side(net, crop) == 1:
        # torch's int8 mean over a 1x1 channels-last map fails ("required rank 4 tensor to use
        # channels_last format"; crops <= 32 px for the ResNets): pool and head in fp32.
        skip += ('head',)
    for name in skip:
        try:
            net.get_submodule(name)
        except AttributeError:
            continue
        mapping = mapping.set_module_name(name, None)
    example = (batches[0][:1],)
    with _quiet():
        try:
            prepared = prepare_fx(net, mapping, example)
        except Exception as exc:  # noqa: BLE001 - FX raises TraceError/TypeError/...
            backbone = getattr(net, 'backbone_name', type(net).__name__)
            raise IncompatibleModelError(
                f'the {backbone} network cannot be quantized with FX ({type(exc).__name__}: '
                f'{exc}); use its fp32 export') from exc
        with torch.no_grad():
            for batch in batches:
                prepared(batch)
        clip_relu6_observers(prepared)
        return convert_fx(prepared).eval()


def calibration_frames(dataset, split: str = 'train', frames: int = DEFAULT_FRAMES,
                       ) -> tuple[list[np.ndarray], list]:
    """``frames`` evenly spaced uint8 RGB frames of a dataset split, with their samples."""
    from posenet_ros.datasets import load_dataset, load_image

    if int(frames) < 1:
        raise ConfigError(f'--frames must be >= 1, got {frames}')
    samples = load_dataset(dataset, split)
    if not samples:
        raise DatasetError(f'{dataset}: split {split!r} has no frames to calibrate on')
    n = min(int(frames), len(samples))
    picks = np.unique(np.linspace(0, len(samples) - 1, n).round().astype(int))
    chosen = [samples[i] for i in picks]
    return [load_image(s) for s in chosen], chosen


def _preprocess(module, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """The export's own preprocessing of each frame (frames may differ in size)."""
    out = []
    with torch.inference_mode():
        for img in images:
            out.append(module.preprocess(torch.from_numpy(np.ascontiguousarray(img))[None]))
    return out


def _batches(tensors: list[torch.Tensor], size: int = 16) -> list[torch.Tensor]:
    return [torch.cat(tensors[i:i + size]) for i in range(0, len(tensors), size)]


def default_output(model_path: str | Path) -> Path:
    """``<dir>/<name>.int8.ts`` next to ``<dir>/<name>.ts``."""
    p = Path(model_path)
    return p.with_name(f'{p.stem}.int8.ts')


def _load_fp32(model_path: Path):
    if model_path.suffix.lower() != '.ts':
        raise CorruptModelError(
            f'{model_path}: quantization starts from the TorchScript export (.ts), got '
            f'{model_path.suffix!r}; pass the .ts file written next to it by posenet-ros train')
    module, meta = load_file(model_path, 'cpu')
    if quantization_of(meta) is not None:
        raise IncompatibleModelError(f'{model_path} is already an int8 model; quantize the fp32 '
                                     'export it was made from')
    try:
        state = module.net.state_dict()
    except AttributeError as exc:
        raise IncompatibleModelError(f'{model_path} has no `net` submodule; re-export it with '
                                     'posenet-ros train') from exc
    return module, meta, state


def quantize_export(model_path: str | Path, calibration, out_path: str | Path | None = None, *,
                    split: str = 'train', frames: int = DEFAULT_FRAMES, fp32_head: bool = False,
                    engine: str = ENGINE, progress: Callable[[str], None] | None = None,
                    ) -> QuantizeResult:
    """Write the int8 version of the fp32 export ``model_path``; see the module docstring.

    ``calibration``: a dataset path (manifest, Cambridge, 7-Scenes or rosbag2 folder; ``frames``
    evenly spaced frames of ``split`` are used) or a sequence of uint8 RGB ``(H, W, 3)`` frames.
    ``out_path`` defaults to ``<name>.int8.ts`` beside the input. Written atomically.
    """
    say = progress or (lambda _msg: None)
    model_path = Path(model_path)
    module, meta, state = _load_fp32(model_path)
    if isinstance(calibration, (str, Path)):
        say(f'reading {frames} calibration frames of {calibration} ({split})')
        images, _ = calibration_frames(calibration, split, frames)
        source = str(calibration)
    else:
        images = [np.asarray(f) for f in calibration]
        source = 'frames passed in'
        if not images:
            raise ConfigError('quantization needs at least one calibration frame')
    for img in images:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise DatasetError(f'calibration frames must be uint8 RGB (H, W, 3), got '
                               f'{img.dtype} {img.shape}')
    backbone = str(meta['backbone'])
    inp = meta['input']
    resize, crop = int(inp['resize']), int(inp['crop'])
    net = eager_network(state, backbone, model_path)
    say(f'calibrating {backbone} on {len(images)} frames ({crop}x{crop} crops, {engine} engine)')
    calib = _batches(_preprocess(module, images))
    qnet = quantize_network(net, calib, crop, fp32_head=fp32_head, engine=engine)
    pn = meta['position_normalization']
    wrapped = ExportedPoseNet(Int8PoseAndFeature(qnet), resize, crop, inp['mean'], inp['std'],
                              pn['mean'], float(pn['scale'])).eval()
    model_id = model_id_of(wrapped, backbone)
    with _quiet(), torch.no_grad():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit deprecation notice
        # FX quantized graphs are traceable but not scriptable; the traced network has no
        # shape-dependent code (the input is always the crop) and runs any batch size.
        wrapped.net.pair = torch.jit.trace(qnet, calib[0][:1], check_trace=False)
    new_meta = copy.deepcopy(meta)
    new_meta.update({
        'model_id': model_id,
        'git_sha': git_sha(),
        'torch_version': torch.__version__,
        'created': _dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds'),
        'quantization': {
            'scheme': SCHEME,
            'engine': engine,
            'weights': 'int8 per-channel symmetric',
            'activations': 'uint8 per-tensor affine (histogram observer)',
            'fp32_modules': list(FP32_ALWAYS + (FP32_HEAD if fp32_head else ())),
            'n_calibration': len(images),
            'calibration_dataset': source,
            'calibration_split': split if isinstance(calibration, (str, Path)) else None,
            'source_model': model_path.name,
            'source_model_id': str(meta['model_id']),
            'torch_version': torch.__version__,
            'device': 'cpu',
        },
    })
    out = Path(out_path) if out_path is not None else default_output(model_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    from posenet_ros.model.paths import dataset_record, recorded_dataset

    trained_on = recorded_dataset(meta, model_path)
    if trained_on is not None:  # relative to the int8 file, wherever --out puts it
        new_meta.setdefault('training', {}).update(dataset_record(trained_on, out.parent))
    say(f'writing {out}')
    save_torchscript(wrapped, out, new_meta)
    return QuantizeResult(out, new_meta, len(images))


# --- comparison (CLI summary, benchmark) -----------------------------------------------------
def _interleaved_ms(models: dict, frames: Sequence[np.ndarray], rounds: int) -> dict:
    """Median model latency (ms) per model, timing them alternately frame by frame."""
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(max(1, rounds)):
        for frame in frames:
            for name, reloc in models.items():
                t0 = time.perf_counter()
                reloc.predict(frame)
                times[name].append((time.perf_counter() - t0) * 1000.0)
    return {k: statistics.median(v) for k, v in times.items()}


def compare_models(fp32_path, int8_path, latency_frames: Sequence[np.ndarray],
                   eval_samples: Sequence | None = None, rounds: int = 3) -> dict:
    """fp32 vs int8 in one process: latency on the same frames and pose differences.

    Latency: :meth:`Relocalizer.predict` (the node's call) on ``latency_frames``, the two models
    alternating frame by frame so background load hits both alike. ``eval_samples``
    (``PoseSample`` with images, e.g. the held-out split): median fp32-vs-int8 position (m) and
    rotation (deg) differences, and each model's median error against the ground truth.
    """
    from posenet_ros.datasets import load_image
    from posenet_ros.evaluation.metrics import frame_errors
    from posenet_ros.model.relocalizer import Relocalizer

    models = {'fp32': Relocalizer(fp32_path, 'cpu'), 'int8': Relocalizer(int8_path, 'cpu')}
    ms = _interleaved_ms(models, latency_frames, rounds)
    result = {'fp32_ms': ms['fp32'], 'int8_ms': ms['int8'],
              'speedup': ms['fp32'] / ms['int8'] if ms['int8'] > 0 else float('nan'),
              'n_latency_frames': len(latency_frames)}
    if eval_samples:
        preds = {k: [m.predict(load_image(s)) for s in eval_samples] for k, m in models.items()}
        pos = {k: np.stack([p.position for p in v]) for k, v in preds.items()}
        quat = {k: np.stack([p.quaternion_wxyz for p in v]) for k, v in preds.items()}
        d_t, d_r = frame_errors(pos['int8'], quat['int8'], pos['fp32'], quat['fp32'])
        true_p = np.stack([s.position for s in eval_samples])
        true_q = np.stack([s.quaternion for s in eval_samples])
        result.update({'n_eval': len(eval_samples),
                       'diff_median_m': float(np.median(d_t)),
                       'diff_median_deg': float(np.median(d_r)),
                       'diff_max_m': float(np.max(d_t)), 'diff_max_deg': float(np.max(d_r))})
        for k in models:
            t_err, r_err = frame_errors(pos[k], quat[k], true_p, true_q)
            result[f'{k}_median_m'] = float(np.median(t_err))
            result[f'{k}_median_deg'] = float(np.median(r_err))
    return result


def _held_out(dataset, train_split: str, limit: int):
    """Up to ``limit`` evenly spaced samples of the held-out split ('test'), or None."""
    from posenet_ros.core.errors import EmptySplitError
    from posenet_ros.datasets import load_dataset

    if train_split == 'test':
        return None, None
    try:
        samples = load_dataset(dataset, 'test')
    except EmptySplitError:
        return None, None
    if len(samples) > limit:
        picks = np.unique(np.linspace(0, len(samples) - 1, limit).round().astype(int))
        samples = [samples[i] for i in picks]
    return samples, 'test'


def write_int8_map(fp32_path, int8_path, dataset, say: Callable[[str], None]) -> Path | None:
    """The int8 model's scene map from the fp32 model's (beside each export), or None.

    The node's default ``refine: request`` needs the map beside the model it loads; the int8
    model gets the fp32 map's frames and points with its own retrieval features
    (:func:`posenet_ros.verify.derive.derive_map`). ``dataset`` holds the map's frames when
    the dataset recorded in the fp32 map is not here. Says why when no map is written.
    """
    from posenet_ros.core.errors import PoseNetError
    from posenet_ros.verify.derive import derive_map
    from posenet_ros.verify.mapfile import default_map_path

    fp32_map = default_map_path(fp32_path)
    fix = f"build it with 'posenet-ros map --model {int8_path} --dataset DIR'"
    if not fp32_map.is_file():
        say(f'no scene map beside {fp32_path} ({fp32_map.name}): the int8 model has none; {fix} '
            'before running the node with refine: request')
        return None
    try:
        try:
            path, _ = derive_map(int8_path, fp32_map)
        except PoseNetError:  # the map's recorded frames moved: in the calibration dataset?
            path, _ = derive_map(int8_path, fp32_map, dataset=dataset)
    except PoseNetError as exc:
        say(f'no scene map written for the int8 model: {exc}; or {fix}')
        return None
    say(f'wrote {path} (the frames and points of {fp32_map.name}, int8 retrieval features)')
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``posenet-ros quantize MODEL.ts --dataset DS [--split train] [--frames N] [--out P]``."""
    parser = argparse.ArgumentParser(
        prog='posenet-ros quantize',
        description='Write an int8 (post-training static quantization, x86 CPU) version of an '
                    'exported model, calibrated on dataset frames, and compare it with the fp32 '
                    'model: latency on the same frames and pose differences on the held-out '
                    'split. The int8 model runs on the CPU only.')
    parser.add_argument('model', help='fp32 TorchScript export (.ts) from posenet-ros train')
    parser.add_argument('--dataset', required=True,
                        help='calibration dataset folder (manifest, Cambridge, 7-Scenes, bag)')
    parser.add_argument('--split', default='train', help='calibration split (default train)')
    parser.add_argument('--frames', type=int, default=DEFAULT_FRAMES,
                        help=f'calibration frames, evenly spaced (default {DEFAULT_FRAMES})')
    parser.add_argument('--out', type=Path, help='output (default <model>.int8.ts beside it)')
    parser.add_argument('--fp32-head', action='store_true',
                        help='keep the pose regressors (head.fc_xyz/fc_wpqr) in fp32')
    parser.add_argument('--eval-frames', type=int, default=100,
                        help='held-out frames compared fp32 vs int8 (default 100, 0 = skip)')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads for the comparison (default 1, as the node)')
    parser.add_argument('--no-map', action='store_true',
                        help="write no scene map for the int8 model (default: the fp32 map's "
                             'frames and points with the int8 retrieval features, '
                             '<model>.int8.map.npz)')
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(max(1, args.threads))

    def say(msg: str) -> None:
        print(f'[quantize] {msg}', flush=True)

    result = quantize_export(args.model, args.dataset, args.out, split=args.split,
                             frames=args.frames, fp32_head=args.fp32_head, progress=say)
    q = result.metadata['quantization']
    say(f'wrote {result.path} (model_id {result.metadata["model_id"]}, from '
        f'{q["source_model_id"]}; {result.n_calibration} calibration frames)')
    if not args.no_map:
        write_int8_map(args.model, result.path, args.dataset, say)
    eval_samples, eval_split = (None, None)
    if args.eval_frames > 0:
        eval_samples, eval_split = _held_out(args.dataset, args.split, args.eval_frames)
    if eval_samples:
        from posenet_ros.datasets import load_image
        latency_frames = [load_image(s) for s in eval_samples[:20]]
    else:
        latency_frames, _ = calibration_frames(args.dataset, args.split, 20)
    say(f'comparing fp32 and int8 ({torch.get_num_threads()} thread(s)) ...')
    cmp = compare_models(args.model, result.path, latency_frames, eval_samples)
    h, w = latency_frames[0].shape[:2]
    print(f'\nlatency (model, batch 1, {h}x{w} frames, median of {3 * len(latency_frames)}, '
          f'interleaved): fp32 {cmp["fp32_ms"]:.1f} ms, int8 {cmp["int8_ms"]:.1f} ms '
          f'({cmp["speedup"]:.2f}x)')
    if eval_samples:
        print(f'pose difference int8 vs fp32 on {cmp["n_eval"]} {eval_split} frames: median '
              f'{cmp["diff_median_m"]:.3f} m / {cmp["diff_median_deg"]:.2f} deg (max '
              f'{cmp["diff_max_m"]:.3f} m / {cmp["diff_max_deg"]:.2f} deg)')
        print(f'error vs ground truth (median): fp32 {cmp["fp32_median_m"]:.3f} m / '
              f'{cmp["fp32_median_deg"]:.2f} deg, int8 {cmp["int8_median_m"]:.3f} m / '
              f'{cmp["int8_median_deg"]:.2f} deg')
    else:
        print('no held-out split (test) in the dataset: pose difference not measured')
    print(f'int8 model: {result.path} (CPU only)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
