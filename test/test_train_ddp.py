"""Distributed training: a real 2-process gloo ``torchrun`` run on the CPU.

The test launches this very file under ``python -m torch.distributed.run --nproc_per_node 2``;
each process trains with DistributedDataParallel and saves its final weights, which must be
identical on both ranks; rank 0 alone writes checkpoints, metrics and the export.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from posenet_ros.model.export import read_metadata
from posenet_ros.model.relocalizer import Relocalizer
from posenet_ros.training.checkpoint import load_checkpoint
from posenet_ros.training.config import load_config


def _worker(dataset: str, out: str) -> None:
    """Body of each torchrun process."""
    import logging

    from posenet_ros.training.train import train

    # every rank logs at INFO: the trainer itself must keep ranks > 0 quiet
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    torch.set_num_threads(1)
    cfg = load_config(None, dict(
        dataset=dataset, backbone='mobilenet_v3_small', pretrained=None, resize=40, crop=32,
        epochs=2, batch_size=3, lr=1e-3, num_threads=1, progress=False,
        run_dir=f'{out}/run', cache_dir=f'{out}/cache', export_dir=f'{out}/models',
        name='ddp'))
    result = train(cfg)
    assert result.world_size == 2
    torch.save(result.model.state_dict(), f'{out}/rank{result.rank}.pt')


@pytest.mark.slow
def test_torchrun_two_process_gloo(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from helpers_data import render_tiny_scene

    ds = render_tiny_scene(tmp_path, n_train=12, n_test=4, width=48, height=40)
    out = tmp_path / 'out'
    out.mkdir()
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    env.pop('WORLD_SIZE', None)
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
         __file__, str(ds), str(out)],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    w0 = torch.load(out / 'rank0.pt', weights_only=True)
    w1 = torch.load(out / 'rank1.pt', weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:  # parameters all-reduced, BatchNorm statistics synced at the end
        assert torch.equal(w0[k], w1[k]), k
    state = load_checkpoint(out / 'run' / 'last.pt')
    assert state['world_size'] == 2 and len(state['rng']) == 2 and state['epoch'] == 2
    for k, v in state['model'].items():
        assert torch.equal(v, w0[k]), k
    rows = (out / 'run' / 'metrics.csv').read_text().splitlines()
    assert len(rows) == 3  # header + one row per epoch: only rank 0 writes
    assert proc.stderr.count('epoch 1/2:') == 1, proc.stderr  # only rank 0 logs progress
    meta = read_metadata(out / 'models' / 'ddp.ts')
    assert meta['training']['world_size'] == 2 and meta['training']['epochs'] == 2
    assert (out / 'models' / 'ddp.pt2').is_file()
    frame = np.full((40, 48, 3), 100, dtype=np.uint8)
    pred = Relocalizer(out / 'models' / 'ddp.ts', warmup=1).predict(frame)
    assert np.all(np.isfinite(pred.position))


if __name__ == '__main__':
    _worker(sys.argv[1], sys.argv[2])
