#!/usr/bin/env python3
r"""Rotation-label seam and learned loss weights: train each variant, score it near the seam.

Canonical labels (w >= 0) of camera-optical orientations in a z-up map flip sign where views
cross w = 0, and an L2 quaternion loss then sees a seam. This script trains the same recipe
(default: ``config/train_demo_cpu.yaml``, no validation split, so no test frame selects the
model) once per variant, scene and seed, SEQUENTIALLY, and scores the final model on each
scene's test split with per-frame errors::

    python scripts/seam_study.py --scene A=/tmp/synthA/dataset --scene B=/tmp/synthB/dataset \
        --seeds 0 1 --threads 1

Per run it reports the train time, the overall median translation / rotation error, the
median rotation error of the test frames near the seam (``|w| < 0.2`` of the canonical
ground-truth label) and of the other frames, their ratio, the near-seam count, and the final
s_x / s_q. Per scene it also reports how many training labels sit near the seam and how many
sign flips there are between consecutive training labels (canonical and in the hemisphere of
the training labels' mean rotation). Writes ``bench_results/seam_study.{json,md}`` after every
run (partial results survive an interrupted study).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from posenet_ros.core.geometry import canonicalize_quaternion, mean_quaternion, to_hemisphere  # noqa: E402,E501
from posenet_ros.datasets import load_dataset  # noqa: E402
from posenet_ros.evaluation.metrics import json_safe  # noqa: E402
from posenet_ros.training.config import load_config  # noqa: E402

#: name -> config overrides (over the recipe). 'baseline' is the behaviour before the change.
VARIANTS = {
    'baseline': {'loss': 'learned', 'quat_loss': 'l2', 'quat_hemisphere': 'canonical',
                 'loss_lr': None},
    'sign_invariant': {'loss': 'learned', 'quat_loss': 'sign_invariant',
                       'quat_hemisphere': 'canonical', 'loss_lr': None},
    'reference': {'loss': 'learned', 'quat_loss': 'l2', 'quat_hemisphere': 'reference',
                  'loss_lr': None},
    'both': {'loss': 'learned', 'quat_loss': 'sign_invariant', 'quat_hemisphere': 'reference',
             'loss_lr': None},
    'both+loss_lr1e-2': {'loss': 'learned', 'quat_loss': 'sign_invariant',
                         'quat_hemisphere': 'reference', 'loss_lr': 1e-2},
    'reference+loss_lr1e-2': {'loss': 'learned', 'quat_loss': 'l2',
                              'quat_hemisphere': 'reference', 'loss_lr': 1e-2},
    'baseline+loss_lr1e-2': {'loss': 'learned', 'quat_loss': 'l2',
                             'quat_hemisphere': 'canonical', 'loss_lr': 1e-2},
    'sign_invariant+loss_lr1e-2': {'loss': 'learned', 'quat_loss': 'sign_invariant',
                                   'quat_hemisphere': 'canonical', 'loss_lr': 1e-2},
    'sign_invariant+loss_lr1e-2+s_q-3': {'loss': 'learned', 'quat_loss': 'sign_invariant',
                                         'quat_hemisphere': 'canonical', 'loss_lr': 1e-2,
                                         's_q_init': -3.0},
    'beta+sign_invariant': {'loss': 'beta', 'quat_loss': 'sign_invariant',
                            'quat_hemisphere': 'canonical', 'loss_lr': None},
    'beta10+sign_invariant': {'loss': 'beta', 'beta': 10.0, 'quat_loss': 'sign_invariant',
                              'quat_hemisphere': 'canonical', 'loss_lr': None},
    'beta+both': {'loss': 'beta', 'quat_loss': 'sign_invariant', 'quat_hemisphere': 'reference',
                  'loss_lr': None},
    'beta': {'loss': 'beta', 'quat_loss': 'l2', 'quat_hemisphere': 'canonical',
             'loss_lr': None},
}
SEAM_W = 0.2


def label_stats(quats: np.ndarray) -> dict:
    """Near-seam labels and sign flips between consecutive labels (canonical vs reference)."""
    canon = canonicalize_quaternion(quats)
    ref = to_hemisphere(canon, mean_quaternion(canon))
    w = np.abs(canon[:, 0])

    def flips(q):
        return int(np.sum(np.sum(q[1:] * q[:-1], axis=1) < 0))

    return {'n': len(canon), 'near_seam_0.2': int(np.sum(w < 0.2)),
            'near_seam_0.15': int(np.sum(w < 0.15)), 'flips_canonical': flips(canon),
            'flips_reference': flips(ref), 'reference_wxyz': mean_quaternion(canon).tolist(),
            'min_dot_reference': float(np.min(ref @ mean_quaternion(canon)))}


def run_one(scene: str, dataset: str, variant: str, seed: int, args, work: Path) -> dict:
    import torch

    from posenet_ros.training.image_cache import build_image_cache
    from posenet_ros.training.train import evaluate_cached, train

    run_dir = work / f'{scene}_{variant}_s{seed}'
    if run_dir.exists():
        shutil.rmtree(run_dir)
    overrides = dict(VARIANTS[variant])
    overrides.update(dataset=dataset, seed=seed, val_split=None, num_threads=args.threads,
                     progress=False, export=False, run_dir=str(run_dir),
                     cache_dir=str(work / 'image_cache'))
    if args.epochs:
        overrides['epochs'] = args.epochs
    cfg = load_config(args.config, overrides)
    result = train(cfg)
    test = load_dataset(dataset, 'test')
    images = build_image_cache(test, cfg.resize, work / 'image_cache', progress=False)
    tp = np.stack([s.position for s in test])
    tq = np.stack([s.quaternion for s in test])
    prev = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        t_err, r_err = evaluate_cached(result.model, images, tp, tq, result.pos_mean,
                                       result.pos_scale, cfg.crop, torch.device('cpu'))
    finally:
        torch.set_num_threads(prev)
    abs_w = np.abs(canonicalize_quaternion(tq)[:, 0])
    near = abs_w < SEAM_W
    close = abs_w < 0.05  # within ~6 deg of the w = 0 crossing itself
    last = result.history[-1] if result.history else {}
    first = result.history[0] if result.history else {}
    med_near = float(np.median(r_err[near])) if near.any() else float('nan')
    med_other = float(np.median(r_err[~near])) if (~near).any() else float('nan')
    shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints are not needed
    return {'scene': scene, 'variant': variant, 'seed': seed, 'epochs': result.epochs,
            'train_time_s': result.train_time_s, 'median_t_m': float(np.median(t_err)),
            'median_r_deg': float(np.median(r_err)), 'near_seam_median_r_deg': med_near,
            'other_median_r_deg': med_other, 'near_over_other': med_near / med_other,
            'n_near_seam': int(near.sum()), 'n_test': len(test),
            'w_below_0.05_median_r_deg': (float(np.median(r_err[close])) if close.any()
                                          else float('nan')),
            'n_w_below_0.05': int(close.sum()),
            'per_frame': {'abs_w': np.round(abs_w, 4).tolist(),
                          't_m': np.round(t_err, 4).tolist(),
                          'r_deg': np.round(r_err, 3).tolist()},
            's_x_first_epoch': first.get('s_x'), 's_q_first_epoch': first.get('s_q'),
            's_x_final': last.get('s_x'), 's_q_final': last.get('s_q'),
            'overrides': VARIANTS[variant]}


def _fmt(v, digits):
    return '' if v is None else f'{v:.{digits}f}'


def markdown(report: dict) -> str:
    lines = ['# Rotation-label seam and learned loss weights', '',
             f'Recipe `{report["config"]}` with overrides {report["recipe_overrides"]}, '
             f'`val_split: null`, {report["threads"]} torch thread(s), one run at a time; '
             f'near seam: test frames with |w| < {SEAM_W} of the canonical label.', '',
             '## Training labels', '',
             '| scene | labels | \\|w\\|<0.2 | \\|w\\|<0.15 | sign flips canonical | '
             'sign flips reference | min <q, q_ref> |', '|---|---|---|---|---|---|---|']
    for scene, st in report['label_stats'].items():
        lines.append(f'| {scene} | {st["n"]} | {st["near_seam_0.2"]} | {st["near_seam_0.15"]} | '
                     f'{st["flips_canonical"]} | {st["flips_reference"]} | '
                     f'{st["min_dot_reference"]:.3f} |')
    lines += ['', '## Runs', '',
              '| scene | variant | seed | train s | median t (m) | median r (deg) | '
              'r near seam | r other | ratio | n near | s_x / s_q final |',
              '|---|---|---|---|---|---|---|---|---|---|---|']
    for r in report['runs']:
        sxq = ('' if r['s_x_final'] is None
               else f'{r["s_x_final"]:.2f} / {r["s_q_final"]:.2f}')
        lines.append(f'| {r["scene"]} | {r["variant"]} | {r["seed"]} | '
                     f'{r["train_time_s"]:.0f} | {r["median_t_m"]:.3f} | '
                     f'{r["median_r_deg"]:.2f} | {r["near_seam_median_r_deg"]:.2f} | '
                     f'{r["other_median_r_deg"]:.2f} | {r["near_over_other"]:.2f} | '
                     f'{r["n_near_seam"]} | {sxq} |')
    # mean over seeds per (scene, variant)
    groups: dict = {}
    for r in report['runs']:
        groups.setdefault((r['scene'], r['variant']), []).append(r)
    if any(len(g) > 1 for g in groups.values()):
        lines += ['', '## Mean over seeds', '',
                  '| scene | variant | seeds | median t (m) | median r (deg) | r near seam | '
                  'r other | ratio |', '|---|---|---|---|---|---|---|---|']
        for (scene, variant), g in groups.items():
            def m(k, g=g):
                return float(np.mean([r[k] for r in g]))
            lines.append(f'| {scene} | {variant} | {len(g)} | {m("median_t_m"):.3f} | '
                         f'{m("median_r_deg"):.2f} | {m("near_seam_median_r_deg"):.2f} | '
                         f'{m("other_median_r_deg"):.2f} | {m("near_over_other"):.2f} |')
    return '\n'.join(lines) + '\n'


def merge(paths, out: Path) -> int:
    """One report of the runs of several (same recipe, same threads)."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    merged = dict(reports[0])
    merged['runs'] = [r for rep in reports for r in rep['runs']]
    for rep in reports[1:]:
        merged['label_stats'].update(rep['label_stats'])
    merged['runs'].sort(key=lambda r: (r['scene'], list(VARIANTS).index(r['variant'])
                                       if r['variant'] in VARIANTS else 99, r['seed']))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix('.json').write_text(json.dumps(json_safe(merged), indent=1))
    out.with_suffix('.md').write_text(markdown(merged))
    print(markdown(merged))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--scene', action='append', metavar='NAME=DATASET',
                    help='a scene to train and test on (repeatable)')
    ap.add_argument('--merge', nargs='+', metavar='JSON',
                    help='instead of training: merge earlier reports into --out')
    ap.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument('--seeds', nargs='+', type=int, default=[0])
    ap.add_argument('--config', default=str(ROOT / 'config' / 'train_demo_cpu.yaml'))
    ap.add_argument('--epochs', type=int, default=None, help='override the recipe epochs')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--work', default='/tmp/seam_study', help='run folders and image caches')
    ap.add_argument('--out', default=str(ROOT / 'bench_results' / 'seam_study'),
                    help='output stem (.json and .md are written)')
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.out))
    if not args.scene:
        ap.error('give at least one --scene NAME=DATASET (or --merge)')
    logging.basicConfig(level=logging.WARNING, format='%(asctime)s %(message)s')
    scenes = dict(s.split('=', 1) for s in args.scene)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {'config': args.config, 'threads': args.threads,
              'recipe_overrides': {'epochs': args.epochs} if args.epochs else {},
              'label_stats': {}, 'runs': []}
    for name, ds in scenes.items():
        report['label_stats'][name] = label_stats(
            np.stack([s.quaternion for s in load_dataset(ds, 'train')]))
    for seed in args.seeds:
        for name, ds in scenes.items():
            for variant in args.variants:
                t0 = time.perf_counter()
                row = run_one(name, ds, variant, seed, args, work)
                report['runs'].append(row)
                print(f'{name} {variant} seed {seed}: {row["median_t_m"]:.3f} m '
                      f'{row["median_r_deg"]:.2f} deg, near seam '
                      f'{row["near_seam_median_r_deg"]:.2f} vs {row["other_median_r_deg"]:.2f} '
                      f'deg, s_x/s_q {row["s_x_final"]}/{row["s_q_final"]} '
                      f'({time.perf_counter() - t0:.0f} s)', flush=True)
                out.with_suffix('.json').write_text(json.dumps(json_safe(report), indent=1))
                out.with_suffix('.md').write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
