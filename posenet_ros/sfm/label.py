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

from posenet_ros.errors import ConfigError, SfMReconstructionError
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
    from posenet_ros.progress import progress

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


def _bag_reference(path, image_topic, pose_topic, tf):
    """A BagDataset used only for ``pose_at`` (reference poses) and camera_info, or None."""
    from rosbags.highlevel import AnyReader

    from posenet_ros.datasets.rosbag_reader import POSE_TYPES, BagDataset

    if pose_topic is None and tf is None:
        with AnyReader([Path(path)]) as reader:
            found = sorted({c.topic for c in reader.connections if c.msgtype in POSE_TYPES})
        if len(found) != 1:
            if found:
                log.warning('bag has several pose topics (%s); pass --pose-topic to use one as '
                            'the metric reference', ', '.join(found))
            return None
        pose_topic = found[0]
    return BagDataset(path, image_topic=image_topic, pose_topic=pose_topic, tf=tf,
                      max_gap=0.2)


def _bag_camera_info(reader, image_topic: str) -> np.ndarray | None:
    """K of the first CameraInfo next to the image topic (``<ns>/camera_info``), or None."""
    ns = image_topic.rsplit('/', 2 if image_topic.endswith('/compressed') else 1)[0]
    conns = [c for c in reader.connections if c.topic == ns + '/camera_info'
             and c.msgtype == 'sensor_msgs/msg/CameraInfo']
    for conn, _, raw in reader.messages(connections=conns):
        k = np.asarray(reader.deserialize(raw, conn.msgtype).k, dtype=np.float64).reshape(3, 3)
        return k if k[0, 0] > 0 and k[1, 1] > 0 else None
    return None


def _collect_bag(src: Path, images_dir: Path, sub: _Subsampler, max_frames, show,
                 image_topic=None, pose_topic=None, tf=None, use_reference=True) -> FrameSet:
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from posenet_ros.datasets.rosbag_reader import IMAGE_TYPES
    from posenet_ros.image_conversion import compressed_msg_to_rgb, image_msg_to_rgb

    bag = src.parent if src.is_file() else src
    try:
        rd = AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
        rd.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises several types
        raise ConfigError(f'cannot open bag {bag}: {exc}') from None
    try:
        topics = {c.topic: c.msgtype for c in rd.connections}
        listing = ', '.join(f'{t} [{m}]' for t, m in sorted(topics.items()))
        if image_topic is None:
            found = sorted(t for t, m in topics.items() if m in IMAGE_TYPES)
            raw = [t for t in found if topics[t] == IMAGE_TYPES[0]]
            found = raw if len(raw) == 1 else found
            if len(found) != 1:
                raise ConfigError(f'{"no" if not found else "several"} image topic(s) in '
                                  f'{bag}; pass --image-topic. Topics: {listing}')
            image_topic = found[0]
        elif topics.get(image_topic) not in IMAGE_TYPES:
            raise ConfigError(f'{image_topic!r} is not an Image/CompressedImage topic of {bag}; '
                              f'topics: {listing}')
        K = _bag_camera_info(rd, image_topic)
        ref = _bag_reference(bag, image_topic, pose_topic, tf) if use_reference else None
        conns = [c for c in rd.connections if c.topic == image_topic]
        total = sum(c.msgcount for c in conns) or None
        names, stamps, reference, index = [], {}, {}, -1
        bar = _progress(total, 'frames', show)
        try:
            for conn, rec_ns, raw_msg in rd.messages(connections=conns):
                index += 1
                bar.update(1)
                msg = rd.deserialize(raw_msg, conn.msgtype)
                t_ns = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
                t_ns = t_ns or int(rec_ns)
                try:
                    rgb = (image_msg_to_rgb(msg) if conn.msgtype == IMAGE_TYPES[0]
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
            source = ref.stats.pose_source if ref is not None else ''
            if ref is not None:
                ref.close()
    finally:
        rd.close()
    if not names:
        raise ConfigError(f'no frame of {image_topic} in {bag} could be decoded')
    if ref is not None and not reference:
        log.warning('no labelled frame has a pose from %s (stamps do not overlap)', source)
    return FrameSet('bag', images_dir, names, stamps, K, reference or None, source, index + 1)


def collect_frames(src, images_dir, fps: float | None = 2.0, min_motion: float | None = None,
                   max_frames: int | None = None, progress: bool = True, **bag_args) -> FrameSet:
    """Write the frames to label into ``images_dir`` (folder copied, video/bag subsampled)."""
    from posenet_ros.datasets.rosbag_reader import is_bag

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
    stats = {'matcher': matcher, 'n_frames': len(frames.names), 'camera_model':
             reader.camera_model, 'intrinsics_known': K is not None}
    mode = pycolmap.CameraMode.SINGLE if frames.kind != 'folder' or K is not None \
        else pycolmap.CameraMode.AUTO
    t0 = time.perf_counter()
    log.info('SfM 1/3: SIFT features of %d frames (CPU)', len(frames.names))
    pycolmap.extract_features(db, frames.images_dir, image_names=frames.names, camera_mode=mode,
                              reader_options=reader, extraction_options=extraction,
                              device=pycolmap.Device.cpu)
    t1 = time.perf_counter()
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
    t2 = time.perf_counter()
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = num_threads
    opts.random_seed = seed
    if K is not None:
        opts.ba_refine_focal_length = False
        opts.ba_refine_principal_point = False
        opts.ba_refine_extra_params = False
    log.info('SfM 3/3: incremental mapping')
    bar = _progress(len(frames.names), 'registered', progress)
    recs = pycolmap.incremental_mapping(db, frames.images_dir, work_dir / 'sparse', opts,
                                        next_image_callback=lambda: bar.update(1))
    bar.close()
    t3 = time.perf_counter()
    stats.update(seconds={'features': round(t1 - t0, 2), 'matching': round(t2 - t1, 2),
                          'mapping': round(t3 - t2, 2), 'total': round(t3 - t0, 2)})
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
    return model, stats


def label(src, out_dir, fps: float | None = 2.0, min_motion: float | None = None,
          max_frames: int | None = None, matcher: str = 'auto', intrinsics=None,
          reference_csv=None, known_distance=None, min_registered: float = 0.5,
          test_every: int = 8, test_glob: str | None = None, robust: bool = True,
          num_threads: int = 2, progress: bool = True, verbose: bool = False,
          **bag_args) -> Path:
    """Label ``src`` (folder, video or bag) with SfM into a manifest dataset; returns poses.csv.

    ``min_registered``: fraction of frames that must register, else
    :class:`SfMReconstructionError` explains what to try. ``bag_args``: ``image_topic``,
    ``pose_topic``, ``tf=(map, camera)``, ``use_reference`` for bags.
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
    if reference_csv is not None:
        reference, ref_source = read_reference_csv(reference_csv), str(reference_csv)
    elif known_distance is None and frames.reference:
        reference, ref_source = frames.reference, f'bag {frames.reference_source}'
    else:
        reference, ref_source = None, ''
    samples, alignment = align_samples(samples, reference, known_distance, robust)
    alignment['reference_source'] = ref_source
    stats['seconds']['label_total'] = round(time.perf_counter() - t0, 2)
    info = {'format': 'posenet_ros-manifest', 'version': 1, 'source': 'sfm-label',
            'input': {'path': str(src), 'kind': frames.kind, 'n_source_frames': frames.n_source,
                      'fps': fps, 'min_motion': min_motion},
            'sfm': stats, 'units': alignment['units'], 'alignment': alignment,
            'frames': {'map_frame': 'map' if reference else 'sfm',
                       'camera_frame': 'camera_optical'}}
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
                    help='bag: pose/odometry topic of the camera optical frame used as metric '
                         "reference (default: the bag's only pose topic, if any)")
    ap.add_argument('--tf', nargs=2, metavar=('MAP_FRAME', 'CAMERA_FRAME'),
                    help='bag: take the reference from TF instead')
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
    if args.input.is_dir() and (args.input / 'metadata.yaml').is_file() or \
            args.input.suffix in ('.db3', '.mcap'):
        bag_args = {'image_topic': args.image_topic, 'pose_topic': args.pose_topic,
                    'tf': tuple(args.tf) if args.tf else None,
                    'use_reference': not args.no_bag_reference}
    path = label(args.input, args.out, fps, args.min_motion, args.max_frames, args.matcher, K,
                 args.align, parse_known_distance(args.known_distance), args.min_registered,
                 args.test_every, args.test_glob, not args.no_robust, args.threads,
                 verbose=args.verbose, **bag_args)
    print(f'dataset: {path.parent}')
    return 0
