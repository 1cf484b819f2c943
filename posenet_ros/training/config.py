"""Training configuration: a defaults dataclass merged with a YAML file and command-line flags.

Merge order (later wins): :class:`TrainConfig` defaults < YAML file < flags / ``overrides``.
Keys are flat (``lr: 3.0e-4``, not nested). Unknown keys are errors that list the valid ones;
values are coerced to the field's type (YAML 1.1 reads ``1e-4`` as a string, so numeric strings
are accepted for numbers) and range-checked by :meth:`TrainConfig.validate`.
``config/train_default.yaml`` documents every key with its default.
"""

from __future__ import annotations

import difflib
import math
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from posenet_ros.core.errors import ConfigError

__all__ = [
    'TrainConfig', 'load_config', 'config_keys', 'OPTIMIZERS', 'SCHEDULES', 'LOSSES',
    'BEST_METRICS', 'RESUME_MAY_DIFFER', 'HELP', 'dump_yaml', 'QUAT_LOSSES', 'QUAT_HEMISPHERES',
    'RESUME_LEGACY', 'resume_defaults',
]

OPTIMIZERS = ('adam', 'adamw', 'sgd')
SCHEDULES = ('cosine', 'step', 'none')
LOSSES = ('learned', 'beta')
BEST_METRICS = ('translation', 'rotation')
QUAT_LOSSES = ('sign_invariant', 'l2')
QUAT_HEMISPHERES = ('reference', 'canonical')

#: Keys that may differ between a checkpoint and the run that resumes it (they do not change
#: the training trajectory, or - ``epochs`` - extend it). Every other key must match.
RESUME_MAY_DIFFER = frozenset({
    'epochs', 'resume', 'run_dir', 'export_dir', 'name', 'export', 'export_pt2', 'map', 'cache',
    'cache_dir', 'progress', 'num_threads', 'device', 'val_every', 'map_frame', 'camera_frame',
    'dataset', 'time_budget',
})

#: Values of keys added after checkpoints were first written, as those older runs trained
#: (a checkpoint without the key ran this way, not with today's default).
RESUME_LEGACY = {'quat_loss': 'l2', 'quat_hemisphere': 'canonical', 'loss_lr': None}


def resume_defaults() -> dict:
    """The config a checkpoint missing a key ran with: defaults, then :data:`RESUME_LEGACY`."""
    return {**TrainConfig().to_dict(), **RESUME_LEGACY}


#: One-line help of every key (CLI ``--help`` and ``config/train_default.yaml``).
HELP = {
    'dataset': 'dataset folder or rosbag2 (manifest, Cambridge, 7-Scenes, bag); required',
    'dataset_kind': 'dataset reader: auto, manifest, cambridge, 7scenes or bag',
    'train_split': 'split trained on',
    'val_split': "validation (median errors, best.pt): 'holdout' (frames of train_split held "
                 'out and never trained on, see val_fraction), a split name, or null (no '
                 'validation: the last epoch is exported)',
    'val_fraction': "'holdout': fraction of train_split held out, in (0, 0.5]",
    'val_segment': "'holdout': frames per held-out contiguous segment (every k-th segment of "
                   'each sequence is held out)',
    'backbone': 'efficientnet_lite0, googlenet, resnet18, resnet34, mobilenet_v3_small/large, '
                'efficientnet_b0',
    'pretrained': "trunk initialisation: 'imagenet' (offline weights), a weights file, or null",
    'dropout': 'dropout of the pose head, in [0, 1)',
    'freeze_bn': 'keep BatchNorm layers in inference mode while training (running statistics '
                 'of the pretrained trunk, affine parameters still learned); for small batches '
                 'of similar frames, e.g. a few dozen SfM-labelled frames',
    'resize': 'shorter image side after resizing (px)',
    'crop': 'square crop fed to the network (px): random when training, centred otherwise',
    'loss': "'learned' (Kendall & Cipolla 2017 s_x/s_q weighting) or 'beta' (PoseNet 2015)",
    'beta': "rotation weight of the 'beta' loss in PoseNet's units (metres; 500 outdoors, "
            '120-750 indoors); with normalize_translation beta / scale is used, same balance',
    's_x_init': "initial s_x of the 'learned' loss",
    's_q_init': "initial s_q of the 'learned' loss (-1: positions are normalised to unit RMS "
                "radius, so rotation needs less weight than the paper's -3 for metres)",
    'loss_lr': "peak learning rate of the 'learned' loss's s_x/s_q (own optimiser group, no "
               'weight decay, same schedule); null: lr',
    'quat_loss': "rotation term: 'sign_invariant' (min(|q_hat - q|, |q_hat + q|)) or 'l2' "
                 '(|q_hat - q|, PoseNet)',
    'quat_hemisphere': "sign of the rotation labels: 'reference' (hemisphere of the training "
                       "labels' mean rotation, stored in the export metadata) or 'canonical' "
                       '(w >= 0, which has a seam where views cross w = 0)',
    'normalize_translation': 'train on (position - mean) / scale of the training split '
                             '(the export de-normalises)',
    'augment': 'random crops and colour jitter when training (off: centre crops)',
    'brightness': 'colour jitter: brightness factor range 1 +- this, in [0, 1)',
    'contrast': 'colour jitter: contrast factor range 1 +- this, in [0, 1)',
    'saturation': 'colour jitter: saturation factor range 1 +- this, in [0, 1)',
    'epochs': 'training epochs (ignored with time_budget, which fits the count)',
    'time_budget': 'wall-clock budget of the whole command, e.g. 20m, 90s, 1h30m or seconds; '
                   'the epoch count and LR schedule are fitted to it; null: off',
    'batch_size': 'images per optimiser step (per process under torchrun)',
    'optimizer': 'adam, adamw or sgd',
    'lr': 'peak learning rate',
    'weight_decay': 'weight decay (L2 for adam/sgd, decoupled for adamw)',
    'momentum': 'SGD momentum',
    'schedule': 'learning-rate schedule: cosine, step or none (applied per step)',
    'warmup_epochs': 'linear warm-up from 0 to lr over this many epochs (may be fractional)',
    'step_epochs': "'step' schedule: multiply the lr by gamma every this many epochs",
    'gamma': "'step' schedule factor",
    'min_lr_ratio': "'cosine' schedule floor, as a fraction of lr",
    'grad_clip': 'clip the gradient norm to this (0 disables)',
    'amp': 'mixed precision on CUDA (autocast float16 + GradScaler); no-op on the CPU',
    'device': 'auto, cpu, cuda or cuda:N (under torchrun cuda uses LOCAL_RANK)',
    'num_threads': 'CPU threads of torch (0: torch default)',
    'seed': 'random seed (weights of the head, data order, augmentation, dropout)',
    'deterministic': 'torch.use_deterministic_algorithms: bit-identical reruns and resumes',
    'cache': 'decode and resize every image once into a uint8 .npy memmap (recommended)',
    'cache_dir': 'image cache folder (null: <parent of run_dir>/image_cache)',
    'val_every': 'validate every this many epochs (and always after the last one)',
    'best_metric': "best.pt selection: lowest median 'translation' or 'rotation' error",
    'progress': 'show tqdm progress bars',
    'run_dir': 'folder of checkpoints (last.pt, best.pt), metrics.csv, config.yaml',
    'name': 'file name (stem) of the exported model',
    'export_dir': 'folder the exported model is written to',
    'export': 'export the best model (TorchScript .ts) at the end',
    'export_pt2': 'also export a torch.export .pt2 next to the .ts',
    'map': 'after exporting, build the scene map that verifies poses (posenet-ros map) '
           'from the training frames, beside the export',
    'map_frame': "map frame stored in the export (null: the dataset's, else 'map')",
    'camera_frame': "camera frame stored in the export (null: the dataset's, else "
                    "'camera_optical')",
    'resume': "checkpoint to resume from ('auto': <run_dir>/last.pt); null starts afresh",
}


@dataclass
class TrainConfig:
    """Every setting of ``posenet-ros train`` with its default (see :data:`HELP`)."""

    # data
    dataset: str | None = None
    dataset_kind: str = 'auto'
    train_split: str = 'train'
    val_split: str | None = 'holdout'
    val_fraction: float = 0.1
    val_segment: int = 10
    # model
    backbone: str = 'efficientnet_lite0'
    pretrained: str | None = 'imagenet'
    dropout: float = 0.5
    freeze_bn: bool = False
    resize: int = 256
    crop: int = 224
    # loss and labels
    loss: str = 'learned'
    beta: float = 500.0
    s_x_init: float = 0.0
    s_q_init: float = -1.0
    loss_lr: float | None = None
    quat_loss: str = 'l2'
    quat_hemisphere: str = 'canonical'
    normalize_translation: bool = True
    # augmentation
    augment: bool = True
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    # optimisation
    epochs: int = 100
    time_budget: str | None = None
    batch_size: int = 32
    optimizer: str = 'adam'
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = 'cosine'
    warmup_epochs: float = 0.0
    step_epochs: int = 30
    gamma: float = 0.1
    min_lr_ratio: float = 0.01
    grad_clip: float = 0.0
    amp: bool = True
    # runtime
    device: str = 'auto'
    num_threads: int = 0
    seed: int = 0
    deterministic: bool = False
    cache: bool = True
    cache_dir: str | None = None
    val_every: int = 1
    best_metric: str = 'translation'
    progress: bool = True
    # outputs
    run_dir: str = 'runs/posenet'
    name: str = 'posenet'
    export_dir: str = 'models'
    export: bool = True
    export_pt2: bool = True
    map: bool = False
    map_frame: str | None = None
    camera_frame: str | None = None
    resume: str | None = None

    def to_dict(self) -> dict:
        """Plain JSON/YAML-serialisable dict of every key."""
        return asdict(self)

    def replace(self, **changes) -> TrainConfig:
        """A copy with ``changes`` applied (coerced and validated)."""
        return load_config(None, {**self.to_dict(), **changes})

    def validate(self) -> TrainConfig:
        """Range- and choice-check every value; raise :class:`ConfigError` naming the key."""
        from posenet_ros.model.network import BACKBONES

        def bad(key, why):
            raise ConfigError(f'config {key}={getattr(self, key)!r}: {why}')

        def choice(key, options):
            if getattr(self, key) not in options:
                bad(key, f'choose one of {", ".join(options)}')

        choice('backbone', BACKBONES)
        choice('loss', LOSSES)
        choice('quat_loss', QUAT_LOSSES)
        choice('quat_hemisphere', QUAT_HEMISPHERES)
        choice('optimizer', OPTIMIZERS)
        choice('schedule', SCHEDULES)
        choice('best_metric', BEST_METRICS)
        choice('dataset_kind', ('auto', 'manifest', 'cambridge', '7scenes', 'bag'))
        for key in ('epochs', 'batch_size', 'resize', 'crop', 'val_every', 'step_epochs',
                    'val_segment'):
            if getattr(self, key) < 1:
                bad(key, 'must be >= 1')
        if self.crop > self.resize:
            bad('crop', f'must be <= resize ({self.resize}); e.g. resize 256, crop 224')
        for key in ('lr', 'beta'):
            if not getattr(self, key) > 0:
                bad(key, 'must be > 0')
        if self.loss_lr is not None and not (math.isfinite(self.loss_lr) and self.loss_lr > 0):
            bad('loss_lr', 'must be > 0 and finite, or null (same as lr)')
        for key in ('weight_decay', 'grad_clip', 'warmup_epochs', 'num_threads'):
            if getattr(self, key) < 0:
                bad(key, 'must be >= 0')
        for key in ('dropout', 'brightness', 'contrast', 'saturation'):
            if not 0.0 <= getattr(self, key) < 1.0:
                bad(key, 'must be in [0, 1)')
        for key in ('momentum', 'min_lr_ratio'):
            if not 0.0 <= getattr(self, key) <= 1.0:
                bad(key, 'must be in [0, 1]')
        if not 0.0 < self.val_fraction <= 0.5:
            bad('val_fraction', 'must be in (0, 0.5]')
        if self.time_budget is not None:
            from posenet_ros.training.budget import parse_duration

            parse_duration(self.time_budget)  # raises a ConfigError that shows the format
        if not 0.0 < self.gamma <= 1.0:
            bad('gamma', 'must be in (0, 1]')
        if self.freeze_bn and self.pretrained is None:
            bad('freeze_bn', 'keeps the running statistics of a pretrained trunk; set pretrained '
                '(e.g. imagenet) or freeze_bn false')
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            bad('warmup_epochs', f'must be shorter than epochs ({self.epochs})')
        if not (self.device == 'auto' or self.device == 'cpu' or self.device == 'cuda'
                or (self.device.startswith('cuda:') and self.device[5:].isdigit())):
            bad('device', 'use auto, cpu, cuda or cuda:N')
        for key in ('name', 'run_dir', 'export_dir', 'train_split'):
            if not str(getattr(self, key)).strip():
                bad(key, 'must not be empty')
        if '/' in self.name or '\\' in self.name:
            bad('name', 'is a file stem, not a path; put the folder in export_dir')
        for key in ('lr', 'beta', 'dropout', 'weight_decay', 'momentum', 'gamma', 'warmup_epochs',
                    's_x_init', 's_q_init', 'grad_clip', 'min_lr_ratio', 'val_fraction'):
            if not math.isfinite(getattr(self, key)):
                bad(key, 'must be finite')
        return self


def config_keys() -> list[str]:
    """Every valid configuration key, in declaration order."""
    return [f.name for f in fields(TrainConfig)]


_TYPES = typing.get_type_hints(TrainConfig)


def _unknown_key_error(keys, where: str) -> ConfigError:
    valid = config_keys()
    hints = []
    for key in keys:
        close = difflib.get_close_matches(str(key), valid, n=1)
        hints.append(f'{key!r}' + (f' (did you mean {close[0]!r}?)' if close else ''))
    return ConfigError(f'unknown config key(s) in {where}: {", ".join(hints)}. Valid keys: '
                       f'{", ".join(valid)}')


def _coerce(key: str, value: Any) -> Any:
    """Convert ``value`` to the type of field ``key`` or raise a ConfigError naming it."""
    typ = _TYPES[key]
    optional = type(None) in typing.get_args(typ)
    base = next((t for t in typing.get_args(typ) if t is not type(None)), typ)

    def fail(what):
        return ConfigError(f'config {key}: expected {what}, got {value!r}')

    if value is None or (optional and isinstance(value, str)
                         and value.strip().lower() in ('none', 'null', '~', '')):
        if optional:
            return None
        raise fail(f'a {base.__name__} (this key cannot be null)')
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ('true', 'yes', 'on', '1'):
            return True
        if isinstance(value, str) and value.strip().lower() in ('false', 'no', 'off', '0'):
            return False
        raise fail('true or false')
    if base is int:
        if isinstance(value, bool):
            raise fail('an integer')
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise fail('an integer')
    if base is float:
        if isinstance(value, bool):
            raise fail('a number')
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-4 (no dot) as a string
                return float(value.strip())
            except ValueError:
                pass
        raise fail('a number')
    if base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise fail('a string')
    raise AssertionError(f'unhandled config type {typ} of {key}')  # pragma: no cover


def _read_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'config file {path} does not exist; pass an existing YAML file '
                          '(see config/train_default.yaml)')
    try:
        data = yaml.safe_load(path.read_text(encoding='utf-8'))
    except yaml.YAMLError as exc:
        mark = getattr(exc, 'problem_mark', None)
        where = f'{path}:{mark.line + 1}' if mark is not None else str(path)
        raise ConfigError(f'{where}: invalid YAML ({getattr(exc, "problem", exc)}); fix the '
                          'syntax') from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f'cannot read config file {path}: {exc}') from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: expected a mapping of key: value pairs at the top level, '
                          f'got {type(data).__name__}')
    return data


def load_config(yaml_path: str | Path | None = None,
                overrides: dict | None = None) -> TrainConfig:
    """Defaults < YAML file ``yaml_path`` < ``overrides``; coerced and validated.

    ``overrides`` holds only the keys to change (e.g. the flags given on the command line).
    Raises :class:`ConfigError` for unknown keys (listing the valid ones) and bad values.
    """
    merged = TrainConfig().to_dict()
    for source, where in ((_read_yaml(yaml_path) if yaml_path is not None else {},
                           str(yaml_path)), (dict(overrides or {}), 'overrides')):
        unknown = [k for k in source if k not in merged]
        if unknown:
            raise _unknown_key_error(unknown, where)
        for key, value in source.items():
            merged[key] = _coerce(key, value)
    return TrainConfig(**merged).validate()


def dump_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML (stored in the run folder and logged)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
