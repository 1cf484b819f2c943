"""posenet_ros.core.progress: plain lines (no carriage returns) when stderr is not a terminal."""

import io
import logging
import subprocess
import sys

from posenet_ros.core.progress import LogProgress, progress


def test_non_tty_prints_lines_without_carriage_returns():
    """A real child process with stderr piped (as under CI, nohup or a launch file)."""
    script = ('from posenet_ros.core.progress import progress\n'
              'bar = progress(total=50, desc="work", unit="frame")\n'
              'for _ in range(50):\n'
              '    bar.update(1)\n'
              'bar.close()\n'
              'for _ in progress(range(20), desc="iter"):\n'
              '    pass\n')
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert '\r' not in err and '\x1b' not in err
    lines = [ln for ln in err.splitlines() if ln.startswith('work:')]
    # every 10 % of 50 frames (9 intermediate lines) plus the final one
    assert len(lines) == 10, err
    assert lines[-1].startswith('work: 50/50 frame done in ')
    assert [ln for ln in err.splitlines() if ln.startswith('iter:')][-1].startswith(
        'iter: 20/20 it done')


def test_lines_go_through_logging_when_configured():
    stream = io.StringIO()
    logger = logging.getLogger('test_progress_logger')
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        bar = LogProgress(total=4, desc='epoch 1/2', unit='step', logger=logger,
                          every_frac=0.5)
        for _ in range(4):
            bar.update(1)
            bar.set_postfix(loss='0.1234')
        bar.close()
        bar.close()  # idempotent
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue().splitlines()
    assert out[0].startswith('epoch 1/2: 2/4 step in ')
    assert out[-1].startswith('epoch 1/2: 4/4 step done in ') and 'loss=0.1234' in out[-1]
    assert len(out) == 2


def test_disabled_is_silent(capsys):
    for _ in progress(range(5), desc='quiet', disable=True):
        pass
    assert capsys.readouterr().err == ''
