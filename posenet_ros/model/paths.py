"""The training set an export records, found again wherever a command runs (no torch import).

An export records its training set twice (``training.dataset``, absolute, and
``training.dataset_relative``, relative to the export's own folder), so that
``posenet-ros map --model``, the evaluation's baselines and the selection warning find it from
any working directory, and after the project folder moved with its models and data together.
Exports written before the second key existed hold one path, often relative to the directory
training ran in: it is tried from the working directory and from the export's folder and the one
above it (the usual ``models/`` beside the data), and otherwise the error names every place
tried.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ['dataset_record', 'recorded_dataset', 'recorded_dataset_candidates']


def dataset_record(dataset, export_dir) -> dict:
    """``{'dataset': absolute, 'dataset_relative': relative to export_dir}`` for the metadata.

    ``dataset_relative`` is None when no relative path exists (another drive on Windows).
    """
    absolute = Path(dataset).expanduser().resolve()
    try:
        relative = os.path.relpath(absolute, Path(export_dir).expanduser().resolve())
    except ValueError:
        relative = None
    return {'dataset': str(absolute), 'dataset_relative': relative}


def recorded_dataset_candidates(meta: dict, model_path=None) -> list[Path]:
    """Every place the export's recorded training set may be, in the order tried."""
    training = meta.get('training') or {}
    recorded = training.get('dataset') or (meta.get('config') or {}).get('dataset')
    relative = training.get('dataset_relative')
    here = Path(model_path).expanduser().resolve().parent if model_path else None
    out: list[Path] = []
    if recorded:
        out.append(Path(recorded).expanduser())
    if relative and here is not None:
        out.append(Path(os.path.normpath(here / relative)))
    if recorded and not Path(recorded).is_absolute() and here is not None:
        # an older export: a path relative to where training ran (often the project root,
        # the folder above models/)
        out += [Path(os.path.normpath(here / recorded)),
                Path(os.path.normpath(here.parent / recorded))]
    unique: list[Path] = []
    for p in out:
        if p not in unique:
            unique.append(p)
    return unique


def recorded_dataset(meta: dict, model_path=None) -> Path | None:
    """The export's training set where it exists now, or None (see the module docstring)."""
    for path in recorded_dataset_candidates(meta, model_path):
        if path.exists():
            return path
    return None
