"""Atomic, resumable training checkpoints: what they hold, how they are written and resumed.

A checkpoint is a ``dict`` saved with :func:`torch.save`: model, optimiser, scheduler, loss and
grad-scaler states, epoch/step counters (:class:`TrainState`), the RNG states of every rank and
the resolved config (:func:`checkpoint_state`, :func:`restore_state`). It is distinct from an
*export* (``posenet_ros.model.export``): checkpoints resume training, exports are deployed.
:func:`read_resume` finds and checks the checkpoint ``--resume`` names; a checkpoint written
before a config key existed resumes with the value that run used
(:data:`~posenet_ros.training.config.RESUME_LEGACY`).

Saving never leaves a half-written file under the final name: the data goes to a temporary file
in the same folder, is flushed and fsync'ed, then ``os.replace``'d over the target (atomic on
POSIX and Windows), and the folder entry is fsync'ed. A crash or Ctrl-C during the save leaves the
previous checkpoint intact (plus at worst a stray hidden ``.*.tmp*`` file).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from posenet_ros.core.atomic import atomic_path
from posenet_ros.core.errors import CheckpointError, ConfigError

__all__ = ['CHECKPOINT_VERSION', 'save_checkpoint', 'load_checkpoint', 'check_resumable',
           'TrainState', 'checkpoint_state', 'restore_state', 'read_resume', 'rng_state',
           'set_rng_state']

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
_REQUIRED = ('checkpoint_version', 'config', 'model', 'epoch')


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the replace itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Atomically write ``state`` (a dict of tensors, numbers, strings, lists, dicts) to ``path``.

    ``checkpoint_version`` is added. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {'checkpoint_version': CHECKPOINT_VERSION, **state}
    # Any failure (incl. KeyboardInterrupt) leaves the old checkpoint; the partial one is removed.
    with atomic_path(path, keep_suffix=False) as tmp, open(tmp, 'wb') as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = 'cpu') -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises :class:`CheckpointError` when the file is missing, truncated/corrupt, not a
    posenet_ros checkpoint, or from an unsupported version. Loads with ``weights_only=True``
    (no arbitrary code from the file is run).
    """
    path = Path(path)
    if not path.is_file():
        hint = ''
        if path.parent.is_dir():
            found = sorted(p.name for p in path.parent.glob('*.pt'))
            hint = f' (checkpoints in {path.parent}: {", ".join(found) or "none"})'
        raise CheckpointError(f'checkpoint {path} does not exist{hint}; pass an existing '
                              'last.pt/best.pt to --resume, or drop --resume to start afresh')
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile,
            pickle.UnpicklingError) as exc:
        raise CheckpointError(f'checkpoint {path} is corrupt or truncated ({exc}); resume from '
                              'another checkpoint (best.pt) or start afresh') from None
    if not isinstance(state, dict) or any(k not in state for k in _REQUIRED):
        raise CheckpointError(f'{path} is not a posenet_ros training checkpoint (expected the '
                              f'keys {list(_REQUIRED)}); an exported .ts/.pt2 model cannot be '
                              'resumed, pass a last.pt/best.pt from a run folder')
    if state['checkpoint_version'] != CHECKPOINT_VERSION:
        raise CheckpointError(f'{path}: checkpoint version {state["checkpoint_version"]!r} is '
                              f'not supported (this posenet_ros writes {CHECKPOINT_VERSION})')
    return state


def check_resumable(state: dict, config: dict, path, may_differ=frozenset()) -> None:
    """Raise :class:`CheckpointError` naming every config key that differs from the checkpoint.

    ``may_differ``: keys allowed to change on resume (e.g. ``epochs``, output folders).
    """
    saved = state.get('config') or {}
    diffs = [f'{k}: checkpoint {saved.get(k)!r} vs now {config.get(k)!r}'
             for k in sorted(set(saved) | set(config))
             if k not in may_differ and saved.get(k) != config.get(k)]
    if diffs:
        raise CheckpointError(
            f'cannot resume from {path}: it was trained with a different configuration ('
            + '; '.join(diffs) + '). Resume with the same settings (the checkpoint config is '
            'stored in it and in config.yaml of its run folder) or start a new run without '
            '--resume')


def read_resume(cfg, main: bool) -> dict | None:
    """The checkpoint to resume from, checked against ``cfg`` (before any expensive work).

    None when not resuming; an existing ``last.pt`` is never silently overwritten.
    """
    from posenet_ros.training.config import RESUME_MAY_DIFFER, resume_defaults

    run_dir = Path(cfg.run_dir)
    last_path = run_dir / 'last.pt'
    if not cfg.resume:
        if last_path.exists():
            raise ConfigError(f'{run_dir} already holds last.pt from an earlier run: pass '
                              '--resume to continue it, choose another --run-dir, or delete '
                              'the folder')
        return None
    resume_path = last_path if cfg.resume == 'auto' else Path(cfg.resume)
    ckpt = load_checkpoint(resume_path)
    # a key missing from an older checkpoint did not exist yet: it ran with the default
    for key, value in resume_defaults().items():
        ckpt.setdefault('config', {}).setdefault(key, value)
    check_resumable(ckpt, cfg.to_dict(), resume_path, RESUME_MAY_DIFFER)
    if ckpt['config'].get('epochs') != cfg.epochs and main and not cfg.time_budget:
        log.warning('resuming with epochs=%d (checkpoint: %s): the LR schedule is '
                    'recomputed for the new length', cfg.epochs, ckpt['config'].get('epochs'))
    return ckpt


# --- what a checkpoint carries --------------------------------------------------------------
@dataclass
class TrainState:
    """Progress a checkpoint carries besides the model/optimiser/scheduler states."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed steps of epoch ``epoch`` (non-zero only mid-epoch)
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {'epoch': None, 'metric': math.inf,
                                                'median_t': None, 'median_r': None})
    train_time: float = 0.0
    partial: dict | None = None  # loss sums of the interrupted epoch
    rng: list | None = None  # per-rank RNG states of a mid-epoch checkpoint
    budget: dict | None = None  # the time budget's state in the run that wrote it

    def improves(self, epoch: int, metric: float, med_t: float, med_r: float) -> bool:
        """Record a validation; True when it is the best so far (best.pt is replaced)."""
        if metric < self.best['metric']:
            self.best = {'epoch': epoch, 'metric': metric, 'median_t': med_t,
                         'median_r': med_r}
            return True
        return False


def rng_state(generator: torch.Generator) -> dict:
    """Every RNG training draws from: torch (and CUDA), ``generator``, Python, numpy."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    state = {'torch': torch.get_rng_state(), 'aug': generator.get_state(),
             'python': list(random.getstate()[1]),
             'numpy': {'key': torch.from_numpy(key.astype(np.int64)), 'pos': int(pos),
                       'has_gauss': int(has_gauss), 'gauss': float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state['torch'])
    generator.set_state(state['aug'])
    random.setstate((3, tuple(int(v) for v in state['python']), None))
    npy = state['numpy']
    np.random.set_state(('MT19937', npy['key'].numpy().astype(np.uint32), npy['pos'],
                         npy['has_gauss'], npy['gauss']))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def checkpoint_state(run, st: TrainState, partial_sums: dict | None = None,
                     budget: dict | None = None) -> dict:
    """The resumable checkpoint dict of ``run`` at progress ``st``.

    ``run``: the trainer's parts (``cfg``, ``dist``, ``data``, ``batches``, ``learner``).

    Collective under DDP: every rank's RNG state is gathered, so a mid-epoch resume is exact
    on all ranks.
    """
    cfg, data = run.cfg, run.data
    rng = run.dist.gather(rng_state(run.batches.generator))
    return {'config': cfg.to_dict(), 'backbone': cfg.backbone, **run.learner.state_dict(),
            'epoch': st.epoch, 'step': st.step, 'rng': rng,
            'world_size': run.dist.world_size, 'best': st.best, 'history': st.history,
            'pos_mean': [float(v) for v in data.pos_mean], 'pos_scale': float(data.pos_scale),
            'train_fingerprint': data.fingerprint, 'train_time_s': st.train_time,
            'partial': partial_sums, 'budget': budget, 'n_val': len(data.val)}


def restore_state(run, ckpt: dict) -> TrainState:
    """Load a checkpoint's states into ``run``; return its progress."""
    run.learner.load_state_dict(ckpt)
    st = TrainState(epoch=int(ckpt['epoch']), step=int(ckpt['step']),
                    history=list(ckpt.get('history', [])),
                    train_time=float(ckpt.get('train_time_s', 0.0)),
                    partial=ckpt.get('partial'), rng=ckpt.get('rng') or [],
                    budget=ckpt.get('budget'))
    st.best = dict(ckpt.get('best', st.best))
    if st.step and len(st.rng) != run.dist.world_size:
        raise CheckpointError(
            f'{run.cfg.resume}: written mid-epoch by {len(st.rng)} process(es), resumed by '
            f'{run.dist.world_size}; resume with the same number of processes')
    return st
