"""The int8 model against its fp32 parent's map and against a map of its own: frames verified.

For each seed: render the test courtyard (80 training, 24 held-out frames), train the test
fixture's recipe (the CPU demo recipe at 64/56 px, 4 epochs, one thread) with its map, quantize
it, and count the held-out frames ``posenet-ros evaluate --map`` verifies for: the fp32 model
with its map, the int8 model with the fp32 map as it is (its model id relabelled: what sharing
would do), and the int8 model with the map ``quantize`` writes for it. Prints one JSON line per
seed. docs/quantization.md quotes seeds 2 and 3.

    OMP_NUM_THREADS=1 python scripts/int8_map_study.py --seeds 2 3 --out /tmp/int8_map_study
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _trained(root: Path, seed: int) -> tuple[Path, Path]:
    from posenet_ros.tools.synthetic import SceneConfig, write_dataset
    from posenet_ros.training.config import load_config
    from posenet_ros.training.train import train

    dataset = root / 'dataset'
    if not dataset.exists():
        write_dataset(dataset, SceneConfig(seed=seed, n_train=80, n_test=24), progress=False)
    model = root / 'models' / 'scene.ts'
    if not model.exists():
        train(load_config(ROOT / 'config' / 'train_demo_cpu.yaml', {
            'dataset': str(dataset), 'run_dir': str(root / 'run'), 'name': 'scene',
            'export_dir': str(root / 'models'), 'epochs': 4, 'resize': 64, 'crop': 56,
            'num_threads': 1, 'export_pt2': False, 'progress': False, 'val_every': 100,
            'cache_dir': str(root / 'cache'), 'map': True}))
    return dataset, model


def study(root: Path, seed: int) -> dict:
    """Frames verified out of the held-out ones, for the three model/map pairs."""
    from posenet_ros.evaluation.evaluate import evaluate
    from posenet_ros.model.export import read_metadata
    from posenet_ros.model.quantize import quantize_export, write_int8_map
    from posenet_ros.verify.mapfile import default_map_path, load_map, save_map

    dataset, fp32 = _trained(root, seed)
    int8 = quantize_export(fp32, dataset, frames=24).path
    own = write_int8_map(fp32, int8, dataset, print)
    shared = load_map(default_map_path(fp32))
    shared.header['model_id'] = read_metadata(int8)['model_id']
    shared_path = save_map(shared, root / 'models' / 'shared_fp32_for_int8.map.npz')
    result = {'seed': seed}
    for name, model, scene_map in (('fp32_model_fp32_map', fp32, default_map_path(fp32)),
                                   ('int8_model_fp32_map', int8, shared_path),
                                   ('int8_model_own_map', int8, own)):
        v = evaluate(model, root / 'eval' / name, dataset=dataset, split='test',
                     map_path=scene_map, baselines=False, progress=False)['verification']
        result[name] = {'verified': v['n_verified'], 'of': v['n_frames'],
                        'wrong': v['n_wrong_verified'],
                        'median_m': round(v['verified_median_t_m'], 4)}
    return result


def main(argv: list[str] | None = None) -> None:
    """Run the study for each ``--seeds`` seed; one JSON line each."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seeds', type=int, nargs='+', default=[2, 3])
    ap.add_argument('--out', type=Path, default=Path('/tmp/int8_map_study'))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for seed in args.seeds:
        print(json.dumps(study(args.out / f'seed{seed}', seed)), flush=True)


if __name__ == '__main__':
    main()
