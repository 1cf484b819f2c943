"""Progress reporting that suits the output: tqdm bars on a terminal, plain lines in logs.

tqdm redraws its bar with carriage returns, which a log file, CI output, ``nohup`` or a ROS
launch file shows as one ever-growing line (or thousands of frames). :func:`progress` gives a
tqdm bar when stderr is a terminal and otherwise a :class:`LogProgress` counter with the same
small interface (``update``, ``set_postfix``, ``close``, iteration, context manager) that writes
one line every ``every_s`` seconds or ``every_frac`` of the total, and a final line with the
count and elapsed time: through :mod:`logging` when logging is set up to show INFO (the trainer
does), else printed to stderr. No carriage return ever reaches a non-terminal.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable

__all__ = ['progress', 'LogProgress', 'is_terminal']

log = logging.getLogger('posenet_ros.core.progress')


def is_terminal(stream=None) -> bool:
    """True when ``stream`` (default stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


class LogProgress:
    """A tqdm-like counter that logs plain lines (for non-terminal output)."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None,
                 desc: str = '', unit: str = 'it', initial: int = 0, disable: bool = False,
                 every_s: float = 30.0, every_frac: float = 0.1, logger=None,
                 final_line: bool = True):
        self.iterable = iterable
        self.final_line = final_line
        if total is None and iterable is not None and hasattr(iterable, '__len__'):
            total = len(iterable)
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._start = initial
        self.disable = disable
        self.every_s, self.every_frac = every_s, every_frac
        self.log = logger or log
        self._t0 = self._last_t = time.perf_counter()
        self._last_n = initial
        self._postfix = ''
        self._closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set_postfix(self, **kw) -> None:
        """Values appended to the next lines (like tqdm's postfix)."""
        self._postfix = ', '.join(f'{k}={v}' for k, v in kw.items())

    def set_description(self, desc: str) -> None:
        """Change the label of the following lines."""
        self.desc = desc

    def _emit(self, text: str) -> None:
        if self.log.isEnabledFor(logging.INFO) and self.log.hasHandlers():
            self.log.info('%s', text)
        else:  # a tool that did not configure logging: still one plain line
            print(text, file=sys.stderr, flush=True)

    def _line(self, final: bool) -> str:
        dt = time.perf_counter() - self._t0
        done = f'{self.n}/{self.total}' if self.total else f'{self.n}'
        rate = (self.n - self._start) / dt if dt > 0 else 0.0
        text = f'{self.desc}: {done} {self.unit}' + (' done' if final else '')
        text += f' in {dt:.1f} s ({rate:.3g} {self.unit}/s)'
        return text + (f', {self._postfix}' if self._postfix else '')

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units; log a line when one is due."""
        self.n += n
        if self.disable or self._closed:
            return
        now = time.perf_counter()
        step = max(1, int(self.total * self.every_frac)) if self.total else None
        due_n = step is not None and self.n - self._last_n >= step
        if (due_n or now - self._last_t >= self.every_s) and not (self.total
                                                                  and self.n >= self.total):
            self._emit(self._line(False))
            self._last_t, self._last_n = now, self.n

    def close(self) -> None:
        """Log the final line (count, time, rate) once."""
        if self._closed:
            return
        self._closed = True
        if not self.disable and self.final_line and self.n > self._start:
            self._emit(self._line(True))


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = '',
             unit: str = 'it', disable: bool = False, initial: int = 0, leave: bool = False,
             every_s: float = 30.0, every_frac: float = 0.1, logger=None,
             final_line: bool = True):
    """A progress counter: a tqdm bar on a terminal, else a :class:`LogProgress`.

    Use like tqdm: ``for x in progress(items, desc='extract', unit='frame'): ...`` or
    ``bar = progress(total=n); bar.update(k); bar.close()``. ``disable`` silences both. Off a
    terminal a line is written (INFO of ``logger``, default ``posenet_ros.core.progress``, when
    logging shows it, else stderr) every
    ``every_frac`` of ``total`` or ``every_s`` seconds, and once at the end (unless
    ``final_line`` is False: the caller logs its own summary, e.g. the trainer's epoch line).
    """
    if not disable and is_terminal():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial,
                       disable=disable, every_s=every_s, every_frac=every_frac, logger=logger,
                       final_line=final_line)
