"""Atomic, resumable training checkpoints.

A checkpoint is a ``dict`` saved with :func:`torch.save`: model, optimiser, scheduler, loss and
grad-scaler states, epoch/step counters, RNG states and the resolved config. It is distinct from
an *export* (``posenet_ros.model.export``): checkpoints resume training, exports are deployed.

Saving never leaves a half-written file under the final name: the data goes to a temporary file
in the same folder, is flushed and fsync'ed, then ``os.replace``'d over the target (atomic on
POSIX and Windows), and the folder entry is fsync'ed. A crash or Ctrl-C during the save leaves the
previous checkpoint intact (plus at worst a stray hidden ``.*.tmp*`` file).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from posenet_ros.core.atomic import atomic_path
from posenet_ros.core.errors import CheckpointError

__all__ = ['CHECKPOINT_VERSION', 'save_checkpoint', 'load_checkpoint', 'check_resumable']

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
