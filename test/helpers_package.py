"""What setup.py installs, asked of setup.py itself (test_package_files, test_launch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CAPTURE = """
import json, setuptools
captured = {}
setuptools.setup = lambda **kw: captured.update(kw)
exec(open('setup.py').read())
print(json.dumps({'data_files': captured['data_files'],
                  'entry_points': captured['entry_points']}))
"""


def setup_py_arguments(root: Path = ROOT) -> dict:
    """``{'data_files': {destination: [files]}, 'entry_points': {...}}`` as setup.py resolves them.

    setup.py runs in a child process from the repository root (or ``root``, a copy of it) with
    ``setuptools.setup`` replaced by a recorder: what colcon or pip would install, without
    building anything.
    """
    out = subprocess.run([sys.executable, '-c', _CAPTURE], cwd=root, capture_output=True,
                         text=True, check=True)
    info = json.loads(out.stdout)
    return {'data_files': {dest: files for dest, files in info['data_files']},
            'entry_points': info['entry_points']}
