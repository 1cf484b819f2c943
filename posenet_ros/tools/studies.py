"""The PoseNet paper's experiments: ``posenet-ros study {robustness,training-size,pretraining}``.

Each writes ``<study>.json``, ``<study>.md`` (a table) and PNG plot(s).

* **robustness** (paper Fig. 8): the test frames of a dataset are degraded - motion blur,
  darkness, sensor noise, a different focal length (zoom) - at increasing levels and the model
  is scored on each; the mean-training-pose error is drawn as the "no information" reference.
* **training-size** (Fig. 9): several models are trained (``posenet_ros.training.train.train``) on
  evenly subsampled training sets of increasing size and scored on the same test split.
* **pretraining** (Fig. 10): the same training from ImageNet weights and from random
  initialisation; validation error per epoch and final test scores.

``--tiny`` shrinks everything (few frames, crop 64, 2 epochs) so a run takes seconds on a CPU:
for tests and smoke checks, not for conclusions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from posenet_ros.core.errors import EvaluationError, NonFiniteOutputError
from posenet_ros.evaluation.metrics import frame_errors, json_safe, summarize

__all__ = [
    'PERTURBATIONS', 'perturb', 'robustness_study', 'training_size_study', 'pretraining_study',
    'subset_indices', 'main', 'TINY_TRAIN',
]


@dataclass(frozen=True)
class Perturbation:
    """A degradation family: its levels (first = identity) and the axis label of the plot."""

    levels: tuple[float, ...]
    tiny_levels: tuple[float, ...]
    label: str


PERTURBATIONS: dict[str, Perturbation] = {
    # Horizontal motion blur: kernel length as a percentage of the image width.
    'motion_blur': Perturbation((0.0, 2.0, 5.0, 10.0), (0.0, 10.0), 'blur length [% of width]'),
    # Darkness: intensities multiplied by this factor (1 = unchanged, 0.1 = night-like).
    'darkness': Perturbation((1.0, 0.5, 0.25, 0.1), (1.0, 0.25), 'brightness factor'),
    # Additive Gaussian sensor noise, standard deviation in 8-bit grey levels.
    'noise': Perturbation((0.0, 5.0, 15.0, 30.0), (0.0, 30.0), 'noise sigma [grey levels]'),
    # Focal length change f'/f: > 1 zooms in (centre crop, resized back); < 1 zooms out
    # (shrunk and padded with black: the wider field of view has no image content).
    'focal_length': Perturbation((0.8, 1.0, 1.25, 1.5), (1.0, 1.5), "focal length factor f'/f"),
}

#: Training settings of ``--tiny`` runs (merged over the defaults and any --config).
TINY_TRAIN = {'resize': 72, 'crop': 64, 'epochs': 2, 'batch_size': 4, 'amp': False,
              'export_pt2': False, 'num_threads': 1, 'val_every': 1, 'lr': 1e-3,
              'backbone': 'efficientnet_lite0'}


def perturb(frame: np.ndarray, kind: str, level: float, seed: int = 0) -> np.ndarray:
    """Degraded copy of an RGB uint8 frame (see :data:`PERTURBATIONS` for the levels)."""
    import cv2

    img = np.ascontiguousarray(frame)
    h, w = img.shape[:2]
    if kind == 'motion_blur':
        length = int(round(level / 100.0 * w))
        if length < 2:
            return img.copy()
        kernel = np.full((1, length), 1.0 / length, dtype=np.float32)
        return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT)
    if kind == 'darkness':
        return np.clip(img.astype(np.float32) * float(level) + 0.5, 0, 255).astype(np.uint8)
    if kind == 'noise':
        if level <= 0:
            return img.copy()
        rng = np.random.default_rng(seed)
        noisy = img.astype(np.float32) + rng.normal(0.0, float(level), img.shape)
        return np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
    if kind == 'focal_length':
        z = float(level)
        if z <= 0:
            raise EvaluationError(f'focal length factor must be > 0, got {z}')
        if abs(z - 1.0) < 1e-9:
            return img.copy()
        if z > 1.0:  # narrower field of view: the central 1/z of the frame, enlarged
            ch, cw = max(1, int(round(h / z))), max(1, int(round(w / z)))
            y0, x0 = (h - ch) // 2, (w - cw) // 2
            return cv2.resize(img[y0:y0 + ch, x0:x0 + cw], (w, h),
                              interpolation=cv2.INTER_LINEAR)
        small = cv2.resize(img, (max(1, int(round(w * z))), max(1, int(round(h * z)))),
                           interpolation=cv2.INTER_AREA)
        out = np.zeros_like(img)
        y0, x0 = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
        out[y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = small
        return out
    raise EvaluationError(f'unknown perturbation {kind!r}; choose one of '
                          f'{", ".join(PERTURBATIONS)}')


# --- scoring ---------------------------------------------------------------------------------
def _score(reloc, frames: Sequence[np.ndarray], positions: np.ndarray,
           quaternions: np.ndarray) -> dict:
    """Summary (``evaluation.metrics.summarize``) of the relocalizer on in-memory frames."""
    n = len(frames)
    pp, pq = np.full((n, 3), np.nan), np.full((n, 4), np.nan)
    ok = np.zeros(n, bool)
    ms = np.full(n, np.nan)
    for i, f in enumerate(frames):
        try:
            pred = reloc.predict(f)
        except NonFiniteOutputError:
            continue
        pp[i], pq[i], ok[i], ms[i] = pred.position, pred.quaternion_wxyz, True, pred.latency_ms
    t_err, r_err = frame_errors(pp, pq, positions, quaternions, ok)
    return summarize(t_err, r_err, ms)


def _row(summary: dict, **first) -> dict:
    return {**first, 'median_t_m': summary['translation_m']['median'],
            'median_r_deg': summary['rotation_deg']['median'],
            'recall_0.5m_5deg': summary['recall']['0.5m_5deg'],
            'recall_1m_10deg': summary['recall']['1m_10deg'],
            'n_failed': summary['n_failed'], 'n_frames': summary['n_frames'],
            'ms_p50': summary.get('ms', {}).get('p50', math.nan)}


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return '-'
        if math.isinf(v):
            return 'inf'
        return f'{v:.3f}'
    return str(v)


def _markdown(title: str, rows: list[dict], notes: Sequence[str] = ()) -> str:
    cols = list(rows[0]) if rows else []
    lines = [f'# {title}', '', '| ' + ' | '.join(cols) + ' |', '|---' * len(cols) + '|']
    lines += ['| ' + ' | '.join(_fmt(r[c]) for c in cols) + ' |' for r in rows]
    lines += [''] + [f'- {n}' for n in notes]
    return '\n'.join(lines) + '\n'


def _write(out: Path, name: str, doc: dict, title: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / f'{name}.json').write_text(json.dumps(json_safe(doc), indent=2, allow_nan=False)
                                      + '\n', encoding='utf-8')
    (out / f'{name}.md').write_text(_markdown(title, doc['rows'], doc.get('notes', ())),
                                    encoding='utf-8')
    return doc


def _load_frames(samples, limit: int | None):
    from posenet_ros.datasets import load_image

    samples = list(samples)[:limit] if limit else list(samples)
    frames = [load_image(s) for s in samples]
    return (samples, frames, np.array([s.position for s in samples]),
            np.array([s.quaternion for s in samples]))


def _mean_pose_reference(dataset, test_pos, test_quat, split: str = 'train') -> dict:
    """Median errors of the mean-training-pose baseline on the test frames (or {})."""
    from posenet_ros.core.errors import PoseNetError
    from posenet_ros.datasets import load_dataset
    from posenet_ros.evaluation.baselines import mean_pose

    try:
        train = load_dataset(dataset, split)
    except PoseNetError:
        return {}
    p, q = mean_pose(np.array([s.position for s in train]), np.array([s.quaternion
                                                                      for s in train]))
    n = len(test_pos)
    t_err, r_err = frame_errors(np.tile(p, (n, 1)), np.tile(q, (n, 1)), test_pos, test_quat)
    return {'median_t_m': float(np.median(t_err)), 'median_r_deg': float(np.median(r_err))}


# --- robustness (Fig. 8) ---------------------------------------------------------------------
def robustness_study(model, dataset, out_dir, *, split: str = 'test',
                     kinds: Sequence[str] | None = None, tiny: bool = False,
                     limit: int | None = None, device: str = 'cpu', seed: int = 0,
                     progress: bool = True) -> dict:
    """Score ``model`` on degraded test frames; writes robustness.{json,md,png}."""
    from posenet_ros.core.progress import progress as _progress
    from posenet_ros.datasets import load_dataset
    from posenet_ros.evaluation import plots
    from posenet_ros.model.relocalizer import Relocalizer

    kinds = list(kinds or PERTURBATIONS)
    unknown = [k for k in kinds if k not in PERTURBATIONS]
    if unknown:
        raise EvaluationError(f'unknown perturbation(s) {unknown}; choose from '
                              f'{", ".join(PERTURBATIONS)}')
    limit = limit or (4 if tiny else None)
    samples, frames, pos, quat = _load_frames(load_dataset(dataset, split), limit)
    reloc = Relocalizer(model, device=device)
    for f in frames[:1]:  # TorchScript specialises on the first calls at a new frame size
        reloc.predict(f)
        reloc.predict(f)
    rows, panels, panels_r = [], {}, {}
    jobs = [(k, lv) for k in kinds for lv in (PERTURBATIONS[k].tiny_levels if tiny
                                              else PERTURBATIONS[k].levels)]
    for kind, level in _progress(jobs, desc='robustness', disable=not progress):
        degraded = [perturb(f, kind, level, seed + i) for i, f in enumerate(frames)]
        s = _score(reloc, degraded, pos, quat)
        rows.append(_row(s, perturbation=kind, level=level))
    ref = _mean_pose_reference(dataset, pos, quat)
    for kind in kinds:
        mine = [r for r in rows if r['perturbation'] == kind]
        xs = [r['level'] for r in mine]
        panels[kind] = (xs, {'PoseNet': [r['median_t_m'] for r in mine]},
                        PERTURBATIONS[kind].label)
        panels_r[kind] = (xs, {'PoseNet': [r['median_r_deg'] for r in mine]},
                          PERTURBATIONS[kind].label)
    out = Path(out_dir)
    title = f'Robustness of {Path(model).name} on {len(frames)} {split} frames'
    plots.plot_panels(panels, out / 'robustness.png', ylabel='median position error [m]',
                      title=title, references={'mean training pose': ref.get('median_t_m',
                                                                             math.nan)})
    plots.plot_panels(panels_r, out / 'robustness_rotation.png',
                      ylabel='median orientation error [deg]', title=title,
                      references={'mean training pose': ref.get('median_r_deg', math.nan)})
    notes = [f'model {model}, dataset {dataset} ({split}, {len(frames)} frames)',
             'levels: ' + '; '.join(f'{k}: {PERTURBATIONS[k].label}' for k in kinds)]
    if ref:
        notes.append(f'mean-training-pose reference: median {ref["median_t_m"]:.3f} m, '
                     f'{ref["median_r_deg"]:.2f} deg')
    doc = {'study': 'robustness', 'rows': rows, 'reference_mean_pose': ref, 'notes': notes,
           'files': ['robustness.md', 'robustness.json', 'robustness.png',
                     'robustness_rotation.png']}
    return _write(out, 'robustness', doc, title)


# --- training runs ---------------------------------------------------------------------------
def subset_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (every (n/k)-th frame of a sequence)."""
    if not 1 <= k <= n:
        raise EvaluationError(f'cannot take {k} of {n} training frames')
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:  # other filesystem, or links not allowed
        shutil.copy2(src, dst)


def _study_dataset(dataset, root: Path, train_splits: dict[str, list[int]],
                   train_split: str = 'train', test_split: str = 'test'):
    """A manifest folder with the test split and one training split per name -> indices.

    Images are hard-linked (copied when that fails) from the source dataset, so any dataset
    kind works; returns ``(root, n_train_total)``.
    """
    import cv2

    from posenet_ros.datasets import PoseSample, load_dataset, write_manifest

    train = load_dataset(dataset, train_split)
    test = load_dataset(dataset, test_split)
    out_samples = []

    def place(s, idx: int, split: str):
        dst = root / 'images' / f'{idx:06d}{s.image_path.suffix if s.image_path else ".png"}'
        if s.image_path is not None:
            _link_or_copy(s.image_path, dst)
        elif not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(dst), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        out_samples.append(PoseSample(position=s.position, quaternion=s.quaternion, split=split,
                                      image_path=dst, stamp=s.stamp, intrinsics=s.intrinsics))

    for name, idxs in train_splits.items():
        for i in idxs:
            place(train[i], i, name)
    for j, s in enumerate(test):
        place(s, len(train) + j, 'test')
    write_manifest(root, out_samples, info={'source': str(dataset), 'study': True,
                                            'splits': {k: len(v) for k, v in
                                                       train_splits.items()}})
    return root, len(train)


def _train_cfg(config, overrides: dict, tiny: bool):
    from posenet_ros.training.config import load_config

    merged = {**(TINY_TRAIN if tiny else {}), **overrides}
    return load_config(config, merged)


def _run_training(cfg_yaml, tiny: bool, base: dict, progress: bool):
    """Train one model; returns (TrainResult, seconds)."""
    from posenet_ros.training.train import train

    cfg = _train_cfg(cfg_yaml, {**base, 'progress': progress}, tiny)
    t0 = time.perf_counter()
    result = train(cfg)
    if result.export_ts is None:
        raise EvaluationError(f'training run {cfg.name} exported no model; set export: true')
    return result, time.perf_counter() - t0


def _score_model(path, frames, pos, quat, device: str) -> dict:
    from posenet_ros.model.relocalizer import Relocalizer

    reloc = Relocalizer(path, device=device)
    if frames:
        reloc.predict(frames[0])
    return _score(reloc, frames, pos, quat)


def training_size_study(dataset, out_dir, *, sizes: Sequence[int] | None = None,
                        config=None, overrides: dict | None = None, tiny: bool = False,
                        device: str = 'cpu', progress: bool = True) -> dict:
    """Train on growing, evenly subsampled training sets; writes training_size.{json,md,png}.

    ``sizes``: numbers of training frames (default: 10 %, 25 %, 50 % and 100 % of the train
    split; ``tiny``: 4 and 8). ``config``/``overrides``: the training settings of every run.
    """
    from posenet_ros.datasets import load_dataset
    from posenet_ros.evaluation import plots

    out = Path(out_dir)
    n_train = len(load_dataset(dataset, 'train'))
    if sizes is None:
        sizes = [4, 8] if tiny else sorted({max(1, round(n_train * f))
                                            for f in (0.1, 0.25, 0.5, 1.0)})
    sizes = sorted({min(int(k), n_train) for k in sizes})
    splits = {f'train_{k}': subset_indices(n_train, k) for k in sizes}
    root, _ = _study_dataset(dataset, out / 'data', splits)
    samples, frames, pos, quat = _load_frames(load_dataset(root, 'test'), 8 if tiny else None)
    rows, notes = [], []
    for k in sizes:
        base = {**(overrides or {}), 'dataset': str(root), 'train_split': f'train_{k}',
                'val_split': 'test', 'run_dir': str(out / 'runs' / f'train_{k}'),
                'export_dir': str(out / 'models'), 'name': f'train_{k}',
                'cache_dir': str(out / 'cache' / f'train_{k}'), 'device': device}
        result, secs = _run_training(config, tiny, base, progress)
        s = _score_model(result.export_ts, frames, pos, quat, device)
        rows.append(_row(s, n_train=k, epochs=result.epochs, train_s=round(secs, 1)))
    ref = _mean_pose_reference(root, pos, quat, f'train_{sizes[-1]}')
    title = f'Accuracy against training-set size ({Path(dataset).name})'
    plots.plot_curves([r['n_train'] for r in rows], {'median position error [m]':
                                                     [r['median_t_m'] for r in rows]},
                      out / 'training_size.png', xlabel='training frames',
                      ylabel='median position error [m]', title=title, logx=len(rows) > 2,
                      secondary={'median orientation error [deg]':
                                 [r['median_r_deg'] for r in rows]},
                      secondary_label='median orientation error [deg]')
    notes.append(f'{len(frames)} test frames; training subsets evenly spaced along the '
                 f'{n_train}-frame train split')
    if ref:
        notes.append(f'mean-training-pose reference: median {ref["median_t_m"]:.3f} m, '
                     f'{ref["median_r_deg"]:.2f} deg')
    doc = {'study': 'training-size', 'rows': rows, 'reference_mean_pose': ref, 'notes': notes,
           'files': ['training_size.md', 'training_size.json', 'training_size.png']}
    return _write(out, 'training_size', doc, title)


def pretraining_study(dataset, out_dir, *, config=None, overrides: dict | None = None,
                      tiny: bool = False, device: str = 'cpu', progress: bool = True) -> dict:
    """ImageNet initialisation against random initialisation; writes pretraining.{json,md,png}.

    Both runs share every other setting (``config``/``overrides``; the backbone must have
    offline ImageNet weights, e.g. the default efficientnet_lite0).
    """
    from posenet_ros.datasets import load_dataset
    from posenet_ros.evaluation import plots

    out = Path(out_dir)
    title = f'ImageNet vs random initialisation ({Path(dataset).name})'
    samples, frames, pos, quat = _load_frames(load_dataset(dataset, 'test'), 8 if tiny else None)
    rows, curves, epochs_axis = [], {}, []
    if tiny:  # a small training set keeps the tiny run quick
        n_train = len(load_dataset(dataset, 'train'))
        root, _ = _study_dataset(dataset, out / 'data',
                                 {'train': subset_indices(n_train, min(8, n_train))})
        dataset = root
    for label, pretrained in (('imagenet', 'imagenet'), ('random', None)):
        base = {**(overrides or {}), 'dataset': str(dataset), 'pretrained': pretrained,
                'run_dir': str(out / 'runs' / label), 'export_dir': str(out / 'models'),
                'name': f'init_{label}', 'cache_dir': str(out / 'cache' / label),
                'device': device}
        result, secs = _run_training(config, tiny, base, progress)
        s = _score_model(result.export_ts, frames, pos, quat, device)
        rows.append(_row(s, init=label, epochs=result.epochs, train_s=round(secs, 1)))
        hist = [h for h in result.history if h.get('val_median_t_m') is not None]
        epochs_axis = [int(h['epoch']) for h in hist] or epochs_axis
        curves[f'{label} init'] = [float(h['val_median_t_m']) for h in hist]
    n_ep = min((len(v) for v in curves.values()), default=0)
    if n_ep:
        plots.plot_curves(epochs_axis[:n_ep], {k: v[:n_ep] for k, v in curves.items()},
                          out / 'pretraining.png', xlabel='epoch',
                          ylabel='validation median position error [m]', title=title)
    else:
        plots.plot_curves([r['init'] for r in rows], {'median position error [m]':
                                                      [r['median_t_m'] for r in rows]},
                          out / 'pretraining.png', xlabel='initialisation',
                          ylabel='test median position error [m]', title=title)
    notes = [f'{len(frames)} test frames; identical settings except the initialisation',
             'curve: validation median translation error per epoch (from the trainer)']
    doc = {'study': 'pretraining', 'rows': rows, 'curves': curves, 'epochs': epochs_axis,
           'notes': notes, 'files': ['pretraining.md', 'pretraining.json', 'pretraining.png']}
    return _write(out, 'pretraining', doc, title)


# --- CLI -------------------------------------------------------------------------------------
def _parse_set(items: Sequence[str] | None) -> dict:
    """``['key=value', ...]`` -> dict (values parsed as YAML scalars)."""
    import yaml

    out = {}
    for item in items or ():
        key, sep, value = item.partition('=')
        if not sep:
            raise EvaluationError(f'--set expects KEY=VALUE, got {item!r}')
        out[key.strip()] = yaml.safe_load(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``posenet-ros study``."""
    ap = argparse.ArgumentParser(prog='posenet-ros study',
                                 description="Run one of the PoseNet paper's experiments.")
    sub = ap.add_subparsers(dest='study', required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('--dataset', required=True, type=Path, help='dataset folder')
    common.add_argument('--out', required=True, type=Path, help='output folder')
    common.add_argument('--device', default='cpu')
    common.add_argument('--tiny', action='store_true',
                        help='tiny sizes (few frames, crop 64, 2 epochs): a smoke test')
    common.add_argument('--quiet', action='store_true', help='no progress bars')
    common.add_argument('--threads', type=int, default=0,
                        help='torch CPU threads (0 = torch default)')
    rob = sub.add_parser('robustness', parents=[common],
                         help='accuracy under blur, darkness, noise, focal length (Fig. 8)')
    rob.add_argument('--model', required=True, type=Path, help='exported model')
    rob.add_argument('--split', default='test')
    rob.add_argument('--perturbations', nargs='+', choices=list(PERTURBATIONS))
    rob.add_argument('--limit', type=int, help='use only the first N test frames')
    for name, helptext in (('training-size', 'accuracy against training-set size (Fig. 9)'),
                           ('pretraining', 'ImageNet vs random initialisation (Fig. 10)')):
        p = sub.add_parser(name, parents=[common], help=helptext)
        p.add_argument('--config', type=Path, help='training YAML for every run')
        p.add_argument('--set', action='append', metavar='KEY=VALUE',
                       help='override a training setting of every run (repeatable)')
        if name == 'training-size':
            p.add_argument('--sizes', nargs='+', type=int,
                           help='training-set sizes in frames (default 10/25/50/100 %%)')
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``posenet-ros study``; prints the Markdown table."""
    args = build_parser().parse_args(argv)
    progress = not args.quiet
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.study == 'robustness':
        robustness_study(args.model, args.dataset, args.out, split=args.split,
                         kinds=args.perturbations, tiny=args.tiny, limit=args.limit,
                         device=args.device, progress=progress)
        name = 'robustness'
    elif args.study == 'training-size':
        training_size_study(args.dataset, args.out, sizes=args.sizes, config=args.config,
                            overrides=_parse_set(args.set), tiny=args.tiny, device=args.device,
                            progress=progress)
        name = 'training_size'
    else:
        pretraining_study(args.dataset, args.out, config=args.config,
                          overrides=_parse_set(args.set), tiny=args.tiny, device=args.device,
                          progress=progress)
        name = 'pretraining'
    print((args.out / f'{name}.md').read_text(encoding='utf-8'))
    print(f'results in {args.out}')
    return 0
