"""Atomic file replacement: write a temporary sibling, then ``os.replace`` it over the target.

A crash, Ctrl-C or full disk while writing leaves the previous file intact (plus at worst nothing:
the partial temporary file is removed). Used for checkpoints, exports, the image cache and logs.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, keep_suffix: bool = True):
    """Yield a temporary path next to ``path``; on success move it over ``path`` atomically.

    The temporary name is hidden, includes the PID (concurrent writers never share one) and by
    default keeps the suffix (``.pt2``/``.npy`` writers insist on it; ``keep_suffix=False``
    gives ``.<name>.tmp<pid>``). On any exception (including KeyboardInterrupt) the temporary
    file is removed and the exception propagates.
    """
    path = Path(path)
    tmp = (path.with_name(f'.{path.stem}.tmp{os.getpid()}{path.suffix}') if keep_suffix
           else path.with_name(f'.{path.name}.tmp{os.getpid()}'))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
