"""``posenet-ros demo``: the whole pipeline on the embedded synthetic scene, end to end.

1. render the synthetic courtyard (training/test dataset folder + a rosbag2 of the test run);
2. train a CPU-sized PoseNet (``config/train_demo_cpu.yaml``), export it to ``models/`` and
   build its scene map beside it (``models/demo.map.npz``);
3. evaluate the export offline on the test split (with the mean-pose and nearest-neighbour
   baselines), coarse and verified against the map side by side;
4. start the real ROS 2 node, replay the test bag into it over DDS and evaluate what it publishes
   (accuracy plus end-to-end latency);
5. print a short summary with the paths of the reports and plots.

Each step is skipped when its output already exists for the same inputs, so a second run reuses
what is built (``--force`` redoes everything). ``--tiny`` shrinks every step (used by the tests).
The ROS part is imported lazily so the rest of the core stays free of rclpy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from posenet_ros.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / 'config' / 'train_demo_cpu.yaml'


def _step(n: int, title: str) -> None:
    print(f'\n=== [{n}/5] {title} ===', flush=True)


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _reuse(stamp: Path, key: str) -> bool:
    return stamp.is_file() and stamp.read_text().strip() == key


def _fmt_row(name: str, s: dict) -> str:
    def f(v, unit, digits):
        return 'n/a' if v is None else f'{v:.{digits}f} {unit}'
    t = s.get('translation_m', {}).get('median')
    r = s.get('rotation_deg', {}).get('median')
    rec = s.get('recall', {})
    ms = s.get('ms', {}).get('p50')
    return (f'  {name:<20} median {f(t, "m", 3):>9} / {f(r, "deg", 2):>10}   '
            f'recall(0.5 m, 5 deg) {rec.get("0.5m_5deg", 0):4.0%}   '
            f'recall(1 m, 10 deg) {rec.get("1m_10deg", 0):4.0%}'
            + (f'   {ms:.1f} ms/frame' if ms is not None else '')
            + (f'   ({s["n_failed"]} failed)' if s.get('n_failed') else ''))


@contextmanager
def _timed(timings: dict, key: str):
    """Record the wall time of the ``with`` body as ``timings[key]`` (seconds)."""
    t0 = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t0


def _render_data(out: Path, scene_cfg, force: bool) -> tuple[Path, Path, str]:
    """Step 1: the dataset folder and the test bag; returns their paths and the data's key."""
    from posenet_ros.tools import synthetic

    data_dir, bag_dir = out / 'data' / 'dataset', out / 'data' / 'bag'
    data_key = _fingerprint(asdict(scene_cfg))
    if force or not _reuse(out / 'data' / '.stamp', data_key):
        if data_dir.exists():
            shutil.rmtree(data_dir)
        synthetic.write_dataset(data_dir, scene_cfg, progress=True)
        synthetic.write_bag(bag_dir, scene_cfg, which='test', overwrite=True)
        (out / 'data' / '.stamp').write_text(data_key)
    else:
        print(f'reusing {data_dir} and {bag_dir}')
    return data_dir, bag_dir, data_key


def _train_model(cfg, models_dir: Path, data_key: str, force: bool) -> tuple[Path, str]:
    """Step 2: train and export unless the same config and data were trained already.

    Returns the TorchScript export and the key of the training (config and data).
    """
    from posenet_ros.training.train import train

    model_ts = models_dir / f'{cfg.name}.ts'
    train_key = _fingerprint({'cfg': cfg.to_dict(), 'data': data_key})
    stamp = models_dir / f'.{cfg.name}.stamp'
    if force or not (model_ts.is_file() and _reuse(stamp, train_key)):
        if Path(cfg.run_dir).exists():  # a new config/data: start a fresh run, do not resume
            shutil.rmtree(cfg.run_dir)
        model_ts = Path(train(cfg).export_ts)
        stamp.write_text(train_key)
    else:
        print(f'reusing {model_ts} (same config and data)')
    return model_ts, train_key


def _scene_map(model_ts: Path, data_dir: Path, map_stamp: Path, train_key: str, force: bool,
               device: str) -> Path:
    """The scene map for verification, beside the export (rebuilt with the model).

    ``map_stamp`` holds the key of the training the map was built for.
    """
    from posenet_ros.verify.build import build_map
    from posenet_ros.verify.mapfile import default_map_path

    map_path = default_map_path(model_ts)
    if force or not (map_path.is_file() and _reuse(map_stamp, train_key)):
        print(f'building the scene map {map_path} from the training frames', flush=True)
        build_map(model_ts, map_path, dataset=data_dir, device=device, progress=True)
        map_stamp.write_text(train_key)
    else:
        print(f'reusing {map_path} (same model)')
    return map_path


def run_demo(out: Path, *, tiny: bool = False, force: bool = False, device: str = 'cpu',
             models_dir: Path | None = None, live: bool = True, seed: int = 0) -> dict:
    """Run the demo into ``out``; return a dict summary (also written to ``out/summary.json``)."""
    from posenet_ros.evaluation.evaluate import evaluate
    from posenet_ros.tools.synthetic import SceneConfig
    from posenet_ros.training.config import load_config

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models_dir = Path(models_dir) if models_dir else ROOT / 'models'
    models_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings = {}

    _step(1, 'rendering the synthetic scene')
    scene_cfg = (SceneConfig(seed=seed, width=160, height=120, fx=138.5, n_train=48, n_test=12)
                 if tiny else SceneConfig(seed=seed))
    with _timed(timings, 'data_s'):
        data_dir, bag_dir, data_key = _render_data(out, scene_cfg, force)

    _step(2, 'training a CPU-sized PoseNet and exporting it')
    name = 'demo_tiny' if tiny else 'demo'
    overrides = {'dataset': str(data_dir), 'run_dir': str(out / 'runs' / name), 'name': name,
                 'export_dir': str(models_dir), 'device': device, 'seed': seed}
    if tiny:
        overrides.update({'epochs': 2, 'resize': 64, 'crop': 56, 'batch_size': 16,
                          'num_threads': 1, 'export_pt2': False})
    with _timed(timings, 'train_s'):
        model_ts, train_key = _train_model(load_config(DEMO_CONFIG, overrides), models_dir,
                                           data_key, force)
    with _timed(timings, 'map_s'):
        map_path = _scene_map(model_ts, data_dir, models_dir / f'.{name}.map.stamp', train_key,
                              force, device)

    _step(3, 'evaluating the exported model offline on the test split (coarse and verified)')
    with _timed(timings, 'offline_eval_s'):
        offline = evaluate(model_ts, out / 'eval_offline', dataset=data_dir, split='test',
                           device=device, title='demo (offline)', map_path=map_path)

    live_summary = None
    if live:
        _step(4, 'starting the node and replaying the test bag through it over DDS')
        from posenet_ros.ros.live_eval import live_evaluate

        with _timed(timings, 'live_eval_s'):
            live_summary = live_evaluate(model_ts, bag_dir, out / 'eval_live',
                                         image_topic='/camera/image_raw',
                                         pose_topic='/ground_truth/pose', device=device,
                                         train_dataset=data_dir, title='demo (live node)',
                                         node_params={'num_threads': 1} if tiny else None)
    else:
        _step(4, 'live evaluation skipped (--no-live)')

    _step(5, 'summary')
    timings['total_s'] = time.perf_counter() - t_start
    summary = {'model': str(model_ts), 'map': str(map_path), 'offline': offline,
               'live': live_summary,
               'timings': timings, 'reports': {'offline': str(out / 'eval_offline'),
                                               'live': str(out / 'eval_live') if live else None}}
    (out / 'summary.json').write_text(json.dumps(summary, indent=2, default=str))
    print(format_summary(summary))
    return summary


def versus_retrieval(methods: dict) -> str | None:
    """One plain sentence: the model (first method) against its nearest-neighbour baseline.

    Retrieval (the pose of the most similar training frame) is what regression alone tends to
    approximate; the sentence says metric by metric which of the two is better on these frames.
    """
    if 'nearest_neighbour' not in methods or not methods:
        return None
    name = next(iter(methods))
    m, nn = methods[name], methods['nearest_neighbour']
    parts, wins, losses = [], [], []
    for label, get, unit, digits, higher_better in (
            ('position median', lambda s: s['translation_m']['median'], ' m', 3, False),
            ('rotation median', lambda s: s['rotation_deg']['median'], ' deg', 2, False),
            ('recall (0.5 m, 5 deg)', lambda s: 100 * s['recall']['0.5m_5deg'], ' %', 0, True),
            ('recall (1 m, 10 deg)', lambda s: 100 * s['recall']['1m_10deg'], ' %', 0, True)):
        a, b = float(get(m)), float(get(nn))
        if a == b:
            verdict = 'tie'
        else:
            better = (a > b) if higher_better else (a < b)
            verdict = 'PoseNet better' if better else 'retrieval better'
            (wins if better else losses).append(label)
        parts.append(f'{label} {a:.{digits}f} vs {b:.{digits}f}{unit} ({verdict})')
    n = m.get('n_frames')
    head = (f'  {name} vs retrieval (pose of the nearest training frame) on the same {n} '
            'held-out frames: ')
    tail = ('PoseNet wins on every metric' if not losses else
            'retrieval wins on every metric' if not wins else
            f'PoseNet wins on {", ".join(wins)}; retrieval on {", ".join(losses)}')
    return head + '; '.join(parts) + '. ' + tail + '.'


def format_summary(summary: dict) -> str:
    """Human-readable summary of :func:`run_demo`'s result."""
    lines = [f'model: {summary["model"]}']
    for key in ('offline', 'live'):
        rep = summary.get(key)
        if not rep:
            continue
        lines.append(f'{key} evaluation ({summary["reports"][key]}):')
        methods = rep.get('methods', {})
        for name, s in methods.items():
            lines.append(_fmt_row(name, s))
        versus = versus_retrieval(methods)
        if versus:
            lines.append(versus)
        ver = rep.get('verification') or {}
        if ver:
            lines.append(f'  verified against the map: {ver["n_verified"]} of {ver["n_frames"]} '
                         f'frames, median error {ver["verified_median_t_m"] * 100:.1f} cm / '
                         f'{ver["verified_median_r_deg"]:.2f} deg, wrong (> 0.25 m or > 2 deg) '
                         f'{ver["n_wrong_verified"]}; refinement p50 '
                         f'{ver["ms"]["total"]["p50"]:.0f} ms')
        lat = rep.get('latency') or {}
        if lat:
            lines.append('  end-to-end latency (image publish -> pose receipt): '
                         f'p50 {lat.get("p50_ms", float("nan")):.1f} ms, '
                         f'p99 {lat.get("p99_ms", float("nan")):.1f} ms')
        plots = rep.get('plots') or {}
        for name, path in plots.items():
            lines.append(f'  plot {name}: {path}')
    t = summary['timings']
    lines.append('time: ' + ', '.join(f'{k[:-2]} {v:.0f} s' for k, v in t.items()))
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point of ``posenet-ros demo``."""
    parser = argparse.ArgumentParser(prog='posenet-ros demo', description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='runs/demo', help='output folder (default runs/demo)')
    parser.add_argument('--models-dir', default=None, help='where to export (default models/)')
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda' or 'auto'")
    parser.add_argument('--tiny', action='store_true', help='tiny sizes (smoke test)')
    parser.add_argument('--force', action='store_true', help='redo every step')
    parser.add_argument('--no-live', action='store_true', help='skip the ROS node part')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.tiny and args.models_dir is None:
        raise ConfigError('--tiny needs --models-dir so tiny models do not land in models/')
    run_demo(Path(args.out), tiny=args.tiny, force=args.force, device=args.device,
             models_dir=args.models_dir, live=not args.no_live, seed=args.seed)
    return 0
