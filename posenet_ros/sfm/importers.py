"""``posenet-ros import-sfm``: a COLMAP or VisualSFM reconstruction -> a manifest dataset.

Registered images become :class:`PoseSample` labels in the project's convention (camera centre,
camera-to-map wxyz, OpenCV pixel intrinsics), copied into ``OUT/images`` and listed in
``OUT/poses.csv``; ``OUT/dataset.json`` records the source, the units (``metres`` after a metric
alignment, otherwise ``sfm_units``) and the alignment with its residuals.

Metric alignment (optional, one of):

* ``--align REF.csv``: surveyed positions ``image,x,y,z`` (>= 3 frames, not on one line) in the
  target frame, fitted with a robust Umeyama Sim(3);
* ``--known-distance IMG_A IMG_B METRES``: scale only (the frame stays SfM's, units metres).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import logging
import shutil
import sys
from pathlib import Path

import numpy as np

from posenet_ros.core.errors import AlignmentError, ConfigError, SfMFormatError
from posenet_ros.datasets.manifest import write_manifest
from posenet_ros.datasets.types import PoseSample
from posenet_ros.sfm.align import (
    Sim3,
    align_poses,
    apply_to_samples,
    residual_stats,
    scale_from_distance,
)
from posenet_ros.sfm.colmap_io import SfmModel, find_colmap_models, read_colmap_model
from posenet_ros.sfm.nvm import is_nvm, read_nvm

__all__ = ['load_reconstruction', 'model_to_samples', 'read_reference_csv', 'align_samples',
           'setup_logging', 'add_alignment_args', 'parse_known_distance',
           'write_sfm_dataset', 'import_sfm', 'main', 'UNITS_METRES', 'UNITS_SFM']

log = logging.getLogger('posenet_ros.sfm')

UNITS_METRES = 'metres'
UNITS_SFM = 'sfm_units'
#: Median alignment residual above this fraction of the trajectory extent is reported.
POOR_FIT_FRACTION = 0.02
SFM_UNITS_WARNING = ('labels are in arbitrary SfM units and an arbitrary frame (no metric '
                     'reference was given): a model trained on them predicts positions in those '
                     'units. Pass a reference (--align REF.csv, --known-distance, or a pose topic '
                     'for bags) to get metres in a real frame.')


def load_reconstruction(recon, images_dir=None) -> SfmModel:
    """Read an ``.nvm`` file or a COLMAP model folder (the largest one of ``sparse/N``)."""
    recon = Path(recon)
    if recon.is_file():
        if is_nvm(recon):
            return read_nvm(recon, images_dir)
        raise SfMFormatError(f'{recon} is neither an .nvm file nor a COLMAP model folder; pass '
                             'the folder holding cameras/images/points3D (.bin or .txt)')
    models = find_colmap_models(recon)
    if not models:
        raise SfMFormatError(f'no COLMAP model found in {recon}: expected cameras + images '
                             '(+ points3D) .bin/.txt in it, in its numbered sub-folders or in '
                             'its sparse/ folder')
    loaded = [read_colmap_model(m) for m in models]
    best = max(loaded, key=lambda m: len(m.images))
    if len(loaded) > 1:
        log.warning('%s holds %d models (%s registered images); using the largest, %s. The '
                    'others are disconnected parts of the scene: more overlap between them '
                    'would merge them', recon, len(loaded),
                    ', '.join(str(len(m.images)) for m in loaded), best.source)
    return best


def _find_image(images_dir: Path, name: str) -> Path | None:
    for cand in (images_dir / name, images_dir / Path(name).name):
        if cand.is_file():
            return cand
    return None


def model_to_samples(model: SfmModel, images_dir, test_every: int = 0,
                     test_glob: str | None = None) -> tuple[list[PoseSample], list[str]]:
    """Registered images -> samples (``image_path`` in ``images_dir``), and names not found.

    Splits: images whose name matches ``test_glob`` are 'test'; otherwise, with
    ``test_every = N > 0``, every N-th image in name order is 'test'; the rest is 'train'.
    """
    images_dir = Path(images_dir)
    samples, missing = [], []
    for i, im in enumerate(sorted(model.images, key=lambda im: im.name)):
        path = _find_image(images_dir, im.name)
        if path is None:
            missing.append(im.name)
            continue
        if test_glob:
            split = 'test' if fnmatch.fnmatch(im.name, test_glob) else 'train'
        else:
            split = 'test' if test_every > 0 and i % test_every == test_every - 1 else 'train'
        position, quat = im.pose()
        cam = model.cameras.get(im.camera_id)
        samples.append(PoseSample(position=position, quaternion=quat, split=split,
                                  image_path=path, name=im.name,
                                  intrinsics=None if cam is None else cam.K))
    return samples, missing


def read_reference_csv(path) -> dict[str, np.ndarray]:
    """``image,x,y,z`` rows (a header row is optional) -> {image name: position}."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'reference file {path} does not exist; it lists surveyed camera '
                          'positions as image,x,y,z')
    out = {}
    with open(path, encoding='utf-8', newline='') as fh:
        for no, row in enumerate(csv.reader(fh), 1):
            row = [c.strip() for c in row]
            if not row or not row[0] or row[0].startswith('#'):
                continue
            if len(row) < 4:
                raise ConfigError(f'{path}:{no}: expected image,x,y,z, got {",".join(row)!r}')
            try:
                out[row[0]] = np.array([float(v) for v in row[1:4]])
            except ValueError:
                if no == 1:
                    continue  # header
                raise ConfigError(f'{path}:{no}: x,y,z must be numbers, got {row[1:4]}') \
                    from None
    if not out:
        raise ConfigError(f'{path} lists no reference positions (expected image,x,y,z rows)')
    return out


def _lookup(table: dict, name: str):
    if name in table:
        return table[name]
    return table.get(Path(name).name)


def align_samples(samples: list[PoseSample], reference: dict | None = None,
                  known_distance: tuple[str, str, float] | None = None,
                  robust: bool = True) -> tuple[list[PoseSample], dict]:
    """Map SfM samples into metres: ``reference`` = {name: position or (position, wxyz)}.

    Returns the new samples and an ``alignment`` dict (method, Sim3, residuals in metres, used
    frames) for dataset.json. Without a reference the samples are returned unchanged and the
    dict says ``units: sfm_units``.
    """
    if reference and known_distance:
        raise ConfigError('give either reference positions or a known distance, not both')
    by_name = {s.name: s for s in samples}
    if known_distance:
        a, b, metres = known_distance
        missing = [n for n in (a, b) if _lookup(by_name, n) is None]
        if missing:
            raise AlignmentError(f'--known-distance frame(s) {missing} are not among the '
                                 f'{len(samples)} registered images; pick registered frames '
                                 f'(e.g. {", ".join(sorted(by_name)[:3])})')
        sim = scale_from_distance(_lookup(by_name, a).position, _lookup(by_name, b).position,
                                  float(metres))
        info = {'units': UNITS_METRES, 'method': 'known_distance', 'frames': [a, b],
                'metres': float(metres), 'sim3': sim.as_dict(),
                'note': 'scale only: the frame (origin, axes) is the arbitrary SfM one'}
        return apply_to_samples(sim, samples), info
    if not reference:
        return samples, {'units': UNITS_SFM, 'method': 'none', 'sim3': Sim3().as_dict(),
                         'note': SFM_UNITS_WARNING}
    src, dst, src_q, dst_q, used = [], [], [], [], []
    for s in samples:
        ref = _lookup(reference, s.name)
        if ref is None:
            continue
        pos, quat = (ref if isinstance(ref, tuple) else (ref, None))
        src.append(s.position)
        dst.append(pos)
        src_q.append(s.quaternion)
        dst_q.append(quat)
        used.append(s.name)
    if len(used) < 3:
        raise AlignmentError(f'only {len(used)} registered image(s) have a reference position '
                             f'({len(reference)} references given, {len(samples)} registered '
                             'images); at least 3 not on one line are needed. Check that the '
                             'reference image names match the image file names')
    with_q = all(q is not None for q in dst_q)
    sim, inliers = align_poses(np.array(src), np.array(dst), np.array(src_q) if with_q else None,
                               np.array(dst_q) if with_q else None, robust=robust)
    stats = residual_stats(sim, np.array(src)[inliers], np.array(dst)[inliers])
    stats_all = residual_stats(sim, np.array(src), np.array(dst), inliers)
    outliers = [n for n, ok in zip(used, inliers) if not ok]
    extent = float(np.ptp(np.array(dst), axis=0).max())
    if stats['median'] > POOR_FIT_FRACTION * extent:
        log.warning('the reconstruction fits the reference poorly: median residual %.3f m over '
                    'a %.1f m trajectory. Part of the SfM model is probably wrong (look at '
                    'dataset.json alignment.residual_m, try --matcher exhaustive, more frames '
                    'or known intrinsics) or the reference is not the camera optical frame',
                    stats['median'], extent)
    info = {'units': UNITS_METRES, 'method': 'umeyama_sim3' + ('_robust' if robust else ''),
            'sim3': sim.as_dict(), 'n_references': len(used), 'residual_m': stats,
            'residual_all_m': stats_all, 'outliers': outliers,
            'poor_fit': bool(stats['median'] > POOR_FIT_FRACTION * extent)}
    return apply_to_samples(sim, samples), info


def write_sfm_dataset(out_dir, samples: list[PoseSample], info: dict,
                      copy_images: bool = True) -> Path:
    """Copy the images into ``OUT/images`` (unless already there) and write the manifest."""
    out_dir = Path(out_dir)
    img_dir = out_dir / 'images'
    img_dir.mkdir(parents=True, exist_ok=True)
    placed = []
    for s in samples:
        src = Path(s.image_path)
        try:
            src.resolve().relative_to(out_dir.resolve())
            dst = src
        except ValueError:
            dst = img_dir / s.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if copy_images:
                shutil.copy2(src, dst)
            else:
                raise ConfigError(f'{src} is outside {out_dir}; copy the images') from None
        placed.append(PoseSample(position=s.position, quaternion=s.quaternion, split=s.split,
                                 image_path=dst, name=dst.relative_to(out_dir).as_posix(),
                                 stamp=s.stamp, intrinsics=s.intrinsics))
    return write_manifest(out_dir, placed, info=info)


def _summary_lines(samples, info) -> list[str]:
    splits = {k: sum(s.split == k for s in samples) for k in sorted({s.split for s in samples})}
    counts = ', '.join(f'{v} {k}' for k, v in splits.items())
    lines = [f'{len(samples)} labelled images ({counts})']
    al = info.get('alignment', {})
    if al.get('units') == UNITS_METRES and 'residual_m' in al:
        r = al['residual_m']
        lines.append(f'aligned to the reference ({al["method"]}, scale {al["sim3"]["scale"]:.4g}):'
                     f' residual median {r["median"]:.3f} m, rmse {r["rmse"]:.3f} m, max '
                     f'{r["max"]:.3f} m over {r["n"]} frames ({len(al["outliers"])} outliers)')
    elif al.get('units') == UNITS_METRES:
        lines.append(f'scaled to metres from a known distance (scale {al["sim3"]["scale"]:.4g})')
    else:
        lines.append('WARNING ' + SFM_UNITS_WARNING)
    return lines


def import_sfm(recon, images_dir, out_dir, reference_csv=None,
               known_distance: tuple[str, str, float] | None = None, test_every: int = 8,
               test_glob: str | None = None, robust: bool = True) -> Path:
    """Turn a reconstruction into a manifest dataset in ``out_dir``; returns its poses.csv."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise ConfigError(f'images folder {images_dir} does not exist; pass the folder the '
                          'reconstruction was made from (--images)')
    model = load_reconstruction(recon, images_dir)
    samples, missing = model_to_samples(model, images_dir, test_every, test_glob)
    if missing:
        log.warning('%d registered image(s) are not in %s and are left out, first: %s',
                    len(missing), images_dir, missing[0])
    if not samples:
        raise SfMFormatError(f'none of the {len(model.images)} registered images of {recon} '
                             f'was found in {images_dir}; pass the folder the image names are '
                             'relative to')
    no_k = [s.name for s in samples if s.intrinsics is None]
    if no_k:
        log.warning('%d image(s) have no intrinsics (image size unknown), first: %s',
                    len(no_k), no_k[0])
    distorted = sorted({c.model for c in model.cameras.values() if c.has_distortion})
    if distorted:
        log.warning('camera model(s) %s have lens distortion; labels and K are exact, but the '
                    'images stay distorted (the network learns from them as they are)',
                    ', '.join(distorted))
    reference = read_reference_csv(reference_csv) if reference_csv else None
    samples, alignment = align_samples(samples, reference, known_distance, robust)
    info = {'format': 'posenet_ros-manifest', 'version': 1, 'source': 'sfm',
            'sfm': {'reconstruction': str(model.source), 'kind': model.kind,
                    'n_registered': len(model.images), 'n_points3D': int(len(model.points)),
                    'missing_images': missing, 'distorted_camera_models': distorted},
            'units': alignment['units'], 'alignment': alignment,
            'frames': {'map_frame': 'map' if reference else 'sfm',
                       'camera_frame': 'camera_optical'}}
    path = write_sfm_dataset(out_dir, samples, info)
    for line in _summary_lines(samples, info):
        (log.warning if line.startswith('WARNING') else log.info)('%s', line)
    return path


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (pytest and tools swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging() -> None:
    """INFO messages of the sfm tools to stderr (once)."""
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter('[%(levelname)s] %(message)s'))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def add_alignment_args(ap: argparse.ArgumentParser) -> None:
    """Options shared by ``import-sfm`` and ``label``."""
    ap.add_argument('--align', type=Path, metavar='REF.csv',
                    help='surveyed camera positions image,x,y,z (>= 3 frames, metres)')
    ap.add_argument('--known-distance', nargs=3, metavar=('IMG_A', 'IMG_B', 'METRES'),
                    help="scale only: the distance between two frames' camera centres")
    ap.add_argument('--no-robust', action='store_true',
                    help='plain least squares (no outlier rejection) for --align')
    ap.add_argument('--test-every', type=int, default=8,
                    help='every N-th labelled frame goes to the test split (0: none; default 8)')
    ap.add_argument('--test-glob', default=None,
                    help='frames whose name matches this pattern are the test split instead')


def parse_known_distance(values) -> tuple[str, str, float] | None:
    """``[IMG_A, IMG_B, METRES]`` from argparse -> typed tuple (None when not given)."""
    if not values:
        return None
    try:
        return values[0], values[1], float(values[2])
    except ValueError:
        raise ConfigError(f'--known-distance METRES must be a number, got {values[2]!r}') \
            from None


def main(argv: list[str] | None = None) -> int:
    """``posenet-ros import-sfm RECON --images DIR --out DATASET``."""
    ap = argparse.ArgumentParser(prog='posenet-ros import-sfm',
                                 description=__doc__.split('\n')[0])
    ap.add_argument('recon', type=Path,
                    help='COLMAP model folder (sparse/0, .bin or .txt) or VisualSFM .nvm file')
    ap.add_argument('--images', type=Path, required=True, help='folder of the images')
    ap.add_argument('--out', type=Path, required=True, help='output dataset folder')
    add_alignment_args(ap)
    args = ap.parse_args(argv)
    setup_logging()
    path = import_sfm(args.recon, args.images, args.out, args.align,
                      parse_known_distance(args.known_distance), args.test_every, args.test_glob,
                      robust=not args.no_robust)
    print(f'dataset: {path.parent}')
    return 0
