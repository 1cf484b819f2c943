"""``posenet-ros label INPUT --out DATASET``: training labels from structure from motion.

PoseNet needs no hand-surveyed poses: SfM on a walk-through of the scene gives them. INPUT is a
folder of images, a video file or a rosbag2 (its image topic). Frames are subsampled (by time or
by image motion), SIFT features are extracted on the CPU, matched sequentially (video-like input)
or exhaustively (small unordered folders), and COLMAP's incremental mapper (``pycolmap``)
registers them. Frames SfM could not register are listed and left out.

Metric labels need a reference: a pose/odometry topic in the bag (used automatically when the
bag has one), ``--align REF.csv`` (surveyed positions of a few frames) or
``--known-distance IMG_A IMG_B METRES``; the reconstruction is then mapped by a Sim(3). Without
one the labels are in SfM units, which the log and ``dataset.json`` (``units: sfm_units``) say.

Layout written: ``OUT/images/`` (the frames), ``OUT/poses.csv`` + ``OUT/dataset.json`` (the
manifest dataset), ``OUT/sfm/`` (COLMAP database and the reconstruction, text format).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from posenet_ros.core.errors import ConfigError, SfMReconstructionError
from posenet_ros.datasets.bagio import add_frame_args, frame_kwargs, is_bag
from posenet_ros.sfm.colmap_io import COLMAP_PIXEL_OFFSET, SfmModel, model_from_reconstruction
from posenet_ros.sfm.importers import (
    _summary_lines,
    add_alignment_args,
    align_samples,
    model_to_samples,
    parse_known_distance,
    read_reference_csv,
    setup_logging,
    write_sfm_dataset,
)

__all__ = ['FrameSet', 'collect_frames', 'run_sfm', 'label', 'main', 'IMAGE_EXTENSIONS',
           'VIDEO_EXTENSIONS']

log = logging.getLogger('posenet_ros.sfm')

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.ppm')
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg')
#: Unordered folders up to this size are matched exhaustively (all pairs) by default.
EXHAUSTIVE_MAX = 150
#: Thumbnail width used to measure image motion between frames.
_MOTION_WIDTH = 160


@dataclass
class FrameSet:
    """Frames written to ``OUT/images`` for SfM, and what is known about them."""

    kind: str  # 'folder', 'video' or 'bag'
    images_dir: Path
    names: list[str]  # relative to images_dir, in capture order
    stamps: dict[str, float] = field(default_factory=dict)
    K: np.ndarray | None = None  # known intrinsics (bag camera_info), OpenCV pixels
    reference: dict | None = None  # name -> (position, wxyz) from the bag's pose source
    reference_source: str = ''
    n_source: int = 0  # frames in the input before subsampling
    reference_frames: dict | None = None  # map/camera frame of the bag's reference poses


class _Subsampler:
    """Keep a frame when ``1/fps`` seconds passed, or when the image moved ``min_motion``."""

    def __init__(self, fps: float | None, min_motion: float | None):
        self.fps, self.min_motion = fps, min_motion
        self.last_t = None
        self.last_gray = None

    def _motion(self, gray) -> float:
        """Median feature displacement since the last kept frame, as a fraction of the width."""
        pts = cv2.goodFeaturesToTrack(self.last_gray, 200, 0.01, 5)
        if pts is None or len(pts) < 8:
            return float(np.mean(np.abs(gray.astype(np.float32) - self.last_gray)) / 255.0)
        nxt, status, _ = cv2.calcOpticalFlowPyrLK(self.last_gray, gray, pts, None)
        ok = status.reshape(-1) == 1
        if ok.sum() < 8:  # lost track: the view changed a lot
            return float('inf')
        disp = np.linalg.norm((nxt - pts).reshape(-1, 2)[ok], axis=1)
        return float(np.median(disp)) / gray.shape[1]

    def keep(self, t: float, rgb: np.ndarray) -> bool:
        """Decide on one frame (``t`` in seconds)."""
        if self.min_motion is not None:
            scale = _MOTION_WIDTH / rgb.shape[1]
            gray = cv2.cvtColor(cv2.resize(rgb, None, fx=scale, fy=scale,
                                           interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
            if self.last_gray is not None and self._motion(gray) < self.min_motion:
                return False
            self.last_gray = gray
            return True
        if self.fps is not None and self.last_t is not None and t - self.last_t < 1.0 / self.fps \
                - 1e-6:
            return False
        self.last_t = t
        return True


def _write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise ConfigError(f'cannot write {path}; check that the output folder is writable')


def _progress(total, desc, show):
    from posenet_ros.core.progress import progress

    return progress(total=total, desc=desc, unit='frame', disable=not show)


def _collect_folder(src: Path, images_dir: Path, max_frames) -> FrameSet:
    files = sorted(p for p in src.rglob('*') if p.suffix.lower() in IMAGE_EXTENSIONS
                   and images_dir.resolve() not in p.resolve().parents)
    if not files:
        raise ConfigError(f'{src} contains no images ({", ".join(IMAGE_EXTENSIONS)})')
    if max_frames and len(files) > max_frames:
        step = len(files) / max_frames
        files = [files[int(i * step)] for i in range(max_frames)]
    names = []
    for f in files:
        rel = f.relative_to(src)
        dst = images_dir / rel
        if f.resolve() != dst.resolve():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dst)
        names.append(rel.as_posix())
    return FrameSet('folder', images_dir, names, n_source=len(files))


def _collect_video(src: Path, images_dir: Path, sub: _Subsampler, max_frames, show) -> FrameSet:
    cap = cv2.VideoCapture(str(src))
    if not cap.isOpened():
        raise ConfigError(f'cannot open video {src}; check the file, or extract its frames to '
                          'a folder (e.g. with ffmpeg) and label the folder')
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    names, stamps, index = [], {}, -1
    bar = _progress(total, 'frames', show)
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            index += 1
            bar.update(1)
            t = index / fps
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            if not sub.keep(t, rgb):
                continue
            name = f'frame_{index:06d}.png'
            _write_png(images_dir / name, rgb)
            names.append(name)
            stamps[name] = t
            if max_frames and len(names) >= max_frames:
                break
    finally:
        cap.release()
        bar.close()
    if not names:
        raise ConfigError(f'no frame could be decoded from {src}; check the codec or extract '
                          'the frames with ffmpeg and label the folder')
    return FrameSet('video', images_dir, names, stamps, n_source=index + 1)


def _bag_reference(bag, reader, image_topic, pose_topic, tf, frame_args):
    """A BagDataset used only for ``pose_at`` (camera reference poses), or None.

    Without ``pose_topic``/``tf`` the bag's only pose topic is used. Its poses are read as the
    frame they describe (Odometry ``child_frame_id``, ...), and composed with the camera
    extrinsic (``/tf_static`` or ``camera_in_base``) when that is not the camera: a base_link
    ``/odom`` never becomes camera labels as it is.
    """
    from posenet_ros.datasets import bagio
    from posenet_ros.datasets.rosbag_reader import BagDataset

    if pose_topic is None and tf is None:
        found = sorted(t for t, m in bagio.topics(reader).items() if m in bagio.POSE_TYPES)
        if len(found) != 1:
            if found:
                log.warning('bag has several pose topics (%s); pass --pose-topic to use one as '
                            'the metric reference', ', '.join(found))
            return None
        pose_topic = found[0]
        log.info("metric reference: the bag's only pose topic %s", pose_topic)
    # Each TF edge within its own gap (a 5 Hz map -> odom composed with 50 Hz odometry), as
    # extract-bag reads it: one short gap for every edge would drop most frames of a robot bag.
    return BagDataset(bag, image_topic=image_topic, pose_topic=pose_topic, tf=tf, max_gap=None,
                      **frame_args)


def _collect_bag(src: Path, images_dir: Path, sub: _Subsampler, max_frames, show,
                 image_topic=None, pose_topic=None, tf=None, use_reference=True,
                 camera_frame=None, pose_frame=None, camera_in_base=None) -> FrameSet:
    from posenet_ros.core.image_conversion import compressed_msg_to_rgb, image_msg_to_rgb
    from posenet_ros.core.ros_conversions import stamp_to_ns
    from posenet_ros.datasets import bagio

    rd, bag = bagio.open_reader(src)
    frame_args = {'camera_frame': camera_frame, 'pose_frame': pose_frame,
                  'camera_in_base': camera_in_base}
    ref = None
    try:
        image_topic = bagio.pick_topic(rd, image_topic, bagio.IMAGE_TYPES, 'image', bag,
                                       flag='--image-topic')
        info_topic = bagio.camera_info_topic(rd, image_topic)
        K = bagio.read_camera_info(rd, info_topic, bag) if info_topic else None
        if use_reference:
            ref = _bag_reference(bag, rd, image_topic, pose_topic, tf, frame_args)
        conns = [c for c in rd.connections if c.topic == image_topic]
        total = sum(c.msgcount for c in conns) or None
        names, stamps, reference, index = [], {}, {}, -1
        bar = _progress(total, 'frames', show)
        try:
            for conn, rec_ns, raw_msg in bagio.iter_messages(rd, conns, bag):
                index += 1
                bar.update(1)
                msg = bagio.deserialize(rd, raw_msg, conn.msgtype, bag)
                t_ns = stamp_to_ns(msg.header.stamp) or int(rec_ns)  # 0: unstamped
                try:
                    rgb = (image_msg_to_rgb(msg) if conn.msgtype == bagio.IMAGE_TYPES[0]
                           else compressed_msg_to_rgb(msg))
                except Exception as exc:  # noqa: BLE001 - one bad message must not stop us
                    log.warning('%s message %d skipped: %s', image_topic, index, exc)
                    continue
                if not sub.keep(t_ns / 1e9, rgb):
                    continue
                name = f'frame_{index:06d}.png'
                _write_png(images_dir / name, rgb)
                names.append(name)
                stamps[name] = t_ns / 1e9
                pose = ref.pose_at(t_ns) if ref is not None else None
                if pose is not None:
                    reference[name] = (np.asarray(pose[0]), np.asarray(pose[1]))
                if max_frames and len(names) >= max_frames:
                    break
        finally:
            bar.close()
    finally:
        if ref is not None:
            ref.close()
        rd.close()
    if not names:
        raise ConfigError(f'no frame of {image_topic} in {bag} could be decoded')
    source, ref_frames = '', None
    if ref is not None:
        st = ref.stats
        source = st.pose_source + (f' of {st.pose_of} composed with {st.extrinsic}'
                                   if st.extrinsic else '')
        ref_frames = {'map_frame': st.pose_frame, 'camera_frame': st.camera_frame,
                      'pose_of': st.pose_of, 'extrinsic': st.extrinsic}
        if not reference:
            log.warning('no labelled frame has a pose from %s (stamps do not overlap)', source)
    return FrameSet('bag', images_dir, names, stamps, K, reference or None, source, index + 1,
                    ref_frames)


def collect_frames(src, images_dir, fps: float | None = 2.0, min_motion: float | None = None,
                   max_frames: int | None = None, progress: bool = True, **bag_args) -> FrameSet:
    """Write the frames to label into ``images_dir`` (folder copied, video/bag subsampled)."""
    src, images_dir = Path(src), Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    if not src.exists():
        raise ConfigError(f'input {src} does not exist; pass an image folder, a video file or '
                          'a rosbag2')
    if is_bag(src):
        sub = _Subsampler(fps, min_motion)
        return _collect_bag(src, images_dir, sub, max_frames, progress, **bag_args)
    if src.is_dir():
        return _collect_folder(src, images_dir, max_frames)
    if src.suffix.lower() in VIDEO_EXTENSIONS or src.is_file():
        return _collect_video(src, images_dir, _Subsampler(fps, min_motion), max_frames,
                              progress)
    raise ConfigError(f'{src}: not an image folder, video or rosbag2')


def _advice(frames: FrameSet, matcher: str) -> str:
    tips = ['record with more overlap between consecutive views (slower motion, no pure '
            'rotation in place), and a textured, static scene',
            'keep more frames (higher --fps or lower --min-motion)']
    if matcher != 'exhaustive':
        tips.append('try --matcher exhaustive (all pairs; slower, finds loops and re-visits)')
    if frames.K is None:
        tips.append('give the calibration with --intrinsics FX FY CX CY')
    return 'What to try: ' + '; '.join(tips) + '.'


def _extract_features(db: Path, frames: FrameSet, K, num_threads: int,
                      max_image_size: int) -> str:
    """SfM 1/3: SIFT features of every frame into ``db`` (CPU); returns the camera model."""
    import pycolmap

    reader = pycolmap.ImageReaderOptions()
    if K is not None:  # known calibration: fixed pinhole (COLMAP pixel centres at +0.5)
        reader.camera_model = 'PINHOLE'
        reader.camera_params = ','.join(str(float(v)) for v in (
            K[0, 0], K[1, 1], K[0, 2] + COLMAP_PIXEL_OFFSET, K[1, 2] + COLMAP_PIXEL_OFFSET))
    else:
        reader.camera_model = 'SIMPLE_RADIAL'
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = num_threads
    extraction.use_gpu = False
    extraction.max_image_size = max_image_size
    # One camera for a video or a bag, or whenever the calibration is given.
    mode = pycolmap.CameraMode.SINGLE if frames.kind != 'folder' or K is not None \
        else pycolmap.CameraMode.AUTO
    log.info('SfM 1/3: SIFT features of %d frames (CPU)', len(frames.names))
    pycolmap.extract_features(db, frames.images_dir, image_names=frames.names, camera_mode=mode,
                              reader_options=reader, extraction_options=extraction,
                              device=pycolmap.Device.cpu)
    return reader.camera_model


def _match(db: Path, matcher: str, num_threads: int) -> None:
    """SfM 2/3: match all pairs ('exhaustive') or each frame with its neighbours in order."""
    import pycolmap

    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = num_threads
    matching.use_gpu = False
    log.info('SfM 2/3: %s matching', matcher)
    if matcher == 'exhaustive':
        pycolmap.match_exhaustive(db, matching_options=matching, device=pycolmap.Device.cpu)
    else:
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = 10
        pairing.quadratic_overlap = True
        pairing.loop_detection = False  # needs a vocabulary tree file, which we do not ship
        pycolmap.match_sequential(db, matching_options=matching, pairing_options=pairing,
                                  device=pycolmap.Device.cpu)


def _map(db: Path, frames: FrameSet, sparse_dir: Path, calibrated: bool, num_threads: int,
         seed: int, progress: bool) -> dict:
    """SfM 3/3: COLMAP's incremental mapper; returns its reconstructions by index."""
    import pycolmap

    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = num_threads
    opts.random_seed = seed
    if calibrated:  # a given calibration stays fixed through bundle adjustment
        opts.ba_refine_focal_length = False
        opts.ba_refine_principal_point = False
        opts.ba_refine_extra_params = False
    log.info('SfM 3/3: incremental mapping')
    bar = _progress(len(frames.names), 'registered', progress)
    recs = pycolmap.incremental_mapping(db, frames.images_dir, sparse_dir, opts,
                                        next_image_callback=lambda: bar.update(1))
    bar.close()
    return recs


def _largest_model(recs: dict, frames: FrameSet, matcher: str, work_dir: Path,
                   stats: dict) -> SfmModel:
    """The reconstruction with the most registered frames, written as text into work_dir/model.

    Adds ``model_sizes`` and ``mean_reprojection_error_px`` to ``stats``.
    """
    if not recs:
        raise SfMReconstructionError(
            f'SfM could not reconstruct anything from {len(frames.names)} frames (no initial '
            f'image pair with enough matches). {_advice(frames, matcher)}')
    sizes = sorted((r.num_reg_images() for r in recs.values()), reverse=True)
    best = max(recs.values(), key=lambda r: r.num_reg_images())
    stats['model_sizes'] = sizes
    if len(sizes) > 1:
        log.warning('SfM split the scene into %d models (%s registered frames); keeping the '
                    'largest. %s', len(sizes), ', '.join(map(str, sizes)),
                    _advice(frames, matcher))
    text_dir = work_dir / 'model'
    text_dir.mkdir()
    best.write_text(str(text_dir))
    model = model_from_reconstruction(best, str(text_dir), 'colmap-text')
    stats['mean_reprojection_error_px'] = float(best.compute_mean_reprojection_error())
    return model


def run_sfm(frames: FrameSet, work_dir, matcher: str = 'auto', intrinsics=None,
            num_threads: int = 2, max_image_size: int = 1600, seed: int = 0,
            progress: bool = True, verbose: bool = False) -> tuple[SfmModel, dict]:
    """SIFT + matching + incremental mapping with pycolmap on ``frames``.

    Returns the largest reconstruction (as :class:`SfmModel`) and run statistics. Raises
    :class:`SfMReconstructionError` with advice when nothing could be reconstructed.
    """
    import pycolmap

    work_dir = Path(work_dir)
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    db = work_dir / 'database.db'
    pycolmap.logging.minloglevel = 0 if verbose else 2  # glog: 0 info, 2 error
    pycolmap.set_random_seed(seed)
    if matcher == 'auto':
        matcher = ('exhaustive' if frames.kind == 'folder' and len(frames.names) <= EXHAUSTIVE_MAX
                   else 'sequential')
    K = intrinsics if intrinsics is not None else frames.K
    t0 = time.perf_counter()
    camera_model = _extract_features(db, frames, K, num_threads, max_image_size)
    stats = {'matcher': matcher, 'n_frames': len(frames.names), 'camera_model': camera_model,
             'intrinsics_known': K is not None}
    t1 = time.perf_counter()
    _match(db, matcher, num_threads)
    t2 = time.perf_counter()
    recs = _map(db, frames, work_dir / 'sparse', K is not None, num_threads, seed, progress)
    t3 = time.perf_counter()
    stats.update(seconds={'features': round(t1 - t0, 2), 'matching': round(t2 - t1, 2),
                          'mapping': round(t3 - t2, 2), 'total': round(t3 - t0, 2)})
    return _largest_model(recs, frames, matcher, work_dir, stats), stats


def label(src, out_dir, fps: float | None = 2.0, min_motion: float | None = None,
          max_frames: int | None = None, matcher: str = 'auto', intrinsics=None,
          reference_csv=None, known_distance=None, min_registered: float = 0.5,
          test_every: int = 8, test_glob: str | None = None, robust: bool = True,
          num_threads: int = 2, progress: bool = True, verbose: bool = False,
          **bag_args) -> Path:
    """Label ``src`` (folder, video or bag) with SfM into a manifest dataset; returns poses.csv.

    ``min_registered``: fraction of frames that must register, else
    :class:`SfMReconstructionError` explains what to try. ``bag_args``: ``image_topic``,
    ``pose_topic``, ``tf=(map, camera)``, ``use_reference``, ``camera_frame``, ``pose_frame``,
    ``camera_in_base`` for bags (see :class:`~posenet_ros.datasets.rosbag_reader.BagDataset`).
    """
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    if matcher not in ('auto', 'sequential', 'exhaustive'):
        raise ConfigError(f'matcher must be auto, sequential or exhaustive, got {matcher!r}')
    frames = collect_frames(src, out_dir / 'images', fps, min_motion, max_frames, progress,
                            **bag_args)
    log.info('%d frames to label (%s input, %d in the source)', len(frames.names), frames.kind,
             frames.n_source)
    if len(frames.names) < 3:
        raise SfMReconstructionError(f'only {len(frames.names)} frame(s) to reconstruct from; '
                                     'SfM needs many overlapping views. '
                                     + _advice(frames, matcher))
    model, stats = run_sfm(frames, out_dir / 'sfm', matcher, intrinsics, num_threads,
                           progress=progress, verbose=verbose)
    registered = set(model.image_names())
    unregistered = [n for n in frames.names if n not in registered]
    rate = len(registered) / len(frames.names)
    stats.update(n_registered=len(registered), registration_rate=round(rate, 4),
                 unregistered=unregistered)
    log.info('registered %d of %d frames (%.0f%%)', len(registered), len(frames.names),
             100 * rate)
    if unregistered:
        log.warning('%d frame(s) could not be registered and are left out: %s%s',
                    len(unregistered), ', '.join(unregistered[:10]),
                    ' ...' if len(unregistered) > 10 else '')
    if rate < min_registered:
        raise SfMReconstructionError(
            f'SfM registered only {len(registered)} of {len(frames.names)} frames '
            f'({100 * rate:.0f}% < {100 * min_registered:.0f}%, see --min-registered); the '
            f'reconstruction is in {out_dir / "sfm"}. {_advice(frames, matcher)}')
    samples, _ = model_to_samples(model, frames.images_dir, test_every, test_glob)
    for s in samples:
        s.stamp = frames.stamps.get(s.name)
    # The map frame written is the one the labels are really in: the bag pose source's header
    # frame (e.g. 'odom' for odometry), 'map' for surveyed CSV points, 'sfm' without reference.
    map_frame, camera_frame = 'map', (frames.reference_frames or {}).get('camera_frame')
    if reference_csv is not None:
        reference, ref_source = read_reference_csv(reference_csv), str(reference_csv)
    elif known_distance is None and frames.reference:
        reference, ref_source = frames.reference, f'bag {frames.reference_source}'
        map_frame = frames.reference_frames['map_frame'] or 'map'
    else:
        reference, ref_source = None, ''
    samples, alignment = align_samples(samples, reference, known_distance, robust)
    alignment['reference_source'] = ref_source
    stats['seconds']['label_total'] = round(time.perf_counter() - t0, 2)
    info = {'format': 'posenet_ros-manifest', 'version': 1, 'source': 'sfm-label',
            'input': {'path': str(src), 'kind': frames.kind, 'n_source_frames': frames.n_source,
                      'fps': fps, 'min_motion': min_motion},
            'sfm': stats, 'units': alignment['units'], 'alignment': alignment,
            'frames': {'map_frame': map_frame if reference else 'sfm',
                       'camera_frame': camera_frame or 'camera_optical'}}
    if frames.reference_frames and reference is frames.reference:
        info['frames'].update(pose_of=frames.reference_frames['pose_of'],
                              extrinsic=frames.reference_frames['extrinsic'])
    path = write_sfm_dataset(out_dir, samples, info)
    for line in _summary_lines(samples, info):
        (log.warning if line.startswith('WARNING') else log.info)('%s', line)
    log.info('SfM took %.1f s (features %.1f, matching %.1f, mapping %.1f)',
             stats['seconds']['total'], stats['seconds']['features'],
             stats['seconds']['matching'], stats['seconds']['mapping'])
    return path


def main(argv: list[str] | None = None) -> int:
    """``posenet-ros label INPUT --out DATASET``."""
    ap = argparse.ArgumentParser(prog='posenet-ros label', description=__doc__.split('\n')[0])
    ap.add_argument('input', type=Path, help='image folder, video file or rosbag2')
    ap.add_argument('--out', type=Path, required=True, help='output dataset folder')
    ap.add_argument('--fps', type=float, default=2.0,
                    help='video/bag: frames kept per second (default 2)')
    ap.add_argument('--min-motion', type=float, default=None,
                    help='video/bag: keep a frame once the image moved this fraction of its '
                         'width since the last kept one (e.g. 0.05); replaces --fps')
    ap.add_argument('--max-frames', type=int, default=None, help='stop after this many frames')
    ap.add_argument('--matcher', choices=('auto', 'sequential', 'exhaustive'), default='auto',
                    help=f'auto: exhaustive for folders of <= {EXHAUSTIVE_MAX} images, '
                         'sequential otherwise')
    ap.add_argument('--intrinsics', nargs=4, type=float, metavar=('FX', 'FY', 'CX', 'CY'),
                    help='known pinhole calibration (OpenCV pixels); kept fixed by SfM')
    ap.add_argument('--image-topic', default=None, help='bag: image topic')
    ap.add_argument('--pose-topic', default=None,
                    help='bag: pose/odometry topic used as metric reference (default: the '
                         "bag's only pose topic, if any); a pose of another frame than the "
                         "camera (e.g. base_link /odom) is composed with the bag's /tf_static "
                         'or --camera-in-base')
    ap.add_argument('--tf', nargs=2, metavar=('MAP_FRAME', 'CAMERA_FRAME'),
                    help='bag: take the reference from TF instead')
    add_frame_args(ap)
    ap.add_argument('--no-bag-reference', action='store_true',
                    help='bag: ignore its poses (labels in SfM units unless --align/...)')
    ap.add_argument('--min-registered', type=float, default=0.5,
                    help='fail when fewer than this fraction of frames register (default 0.5)')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--verbose', action='store_true', help="show COLMAP's own log")
    ap.add_argument('--force', action='store_true', help='overwrite an existing OUT folder')
    add_alignment_args(ap)
    args = ap.parse_args(argv)
    setup_logging()
    if args.out.exists() and any(args.out.iterdir()):
        if not args.force:
            raise ConfigError(f'{args.out} exists and is not empty; pass --force to overwrite')
        shutil.rmtree(args.out)
    K = None
    if args.intrinsics:
        fx, fy, cx, cy = args.intrinsics
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    fps = None if args.min_motion is not None else args.fps
    bag_args = {}
    if is_bag(args.input):
        bag_args = {'image_topic': args.image_topic, 'pose_topic': args.pose_topic,
                    'tf': tuple(args.tf) if args.tf else None,
                    'use_reference': not args.no_bag_reference, **frame_kwargs(args)}
    path = label(args.input, args.out, fps, args.min_motion, args.max_frames, args.matcher, K,
                 args.align, parse_known_distance(args.known_distance), args.min_registered,
                 args.test_every, args.test_glob, not args.no_robust, args.threads,
                 verbose=args.verbose, **bag_args)
    print(f'dataset: {path.parent}')
    return 0
