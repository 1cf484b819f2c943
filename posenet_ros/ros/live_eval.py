"""Live evaluation: play a bag into the RUNNING relocalization node and score what it publishes.

:func:`live_evaluate` starts the node (``posenet_ros.ros.relocalize_node``) as a child process
on a private DDS domain, waits until it subscribes to the image topic (model loaded and warm),
publishes the bag's images with their recorded timing (``BagPlayer``), records every
``~/pose`` (``PoseStamped`` stamped with the image stamp) and writes the same report as
``posenet-ros evaluate``, through the same builder
(``posenet_ros.evaluation.builder.ReportBuilder``: ground truth, baselines, verification
section, report files), plus the **end-to-end latency** of each frame = pose receipt time -
image publish time (one monotonic clock, this process), which includes DDS transport both ways,
image conversion, inference and the node's queueing. Frames the node dropped (its camera input
keeps only the newest frame) have no pose and count as failures; the report says how many.

With a scene map (``map_path``, ``posenet-ros evaluate --live --map MAP``) the node runs with
``refine: continuous``: the bag's ``camera_info`` (beside the image topic) is played too, every
``~/verified_pose`` is recorded, and the report gets the ``refined_live`` method and the same
``verification`` section as offline evaluation (frames without a verified pose count as
unverified, including those the verification thread skipped while busy).

Only what is live is here: the node process and the private ROS session
(:class:`_LiveSession`), playing the bag, recording the node's outputs (:class:`_Recorder`),
matching them to the frames by stamp, and the end-to-end latency.
``posenet-ros evaluate --live --model M --bag B ...`` calls it.
"""

from __future__ import annotations

import math
import os
import random
import struct
import threading
import time
from pathlib import Path

import numpy as np

from posenet_ros.core.errors import EvaluationError
from posenet_ros.core.geometry import canonicalize_quaternion
from posenet_ros.core.ros_conversions import camera_info_topic, msg_to_pose, stamp_to_ns
from posenet_ros.evaluation.report import MODEL_METHOD, MethodResult
from posenet_ros.ros.process import NODE_MODULE, NodeProcess

__all__ = ['live_evaluate', 'header_stamp_ns', 'NODE_MODULE', 'POSE_TOPIC']

POSE_TOPIC = '/posenet_relocalizer/pose'
VERIFIED_TOPIC = '/posenet_relocalizer/verified_pose'
DIAGNOSTICS_NAME = '/posenet_relocalizer: relocalization'  # the node's DiagnosticStatus name
MATCH_TOL_NS = 100_000  # 0.1 ms


def header_stamp_ns(raw: bytes) -> int:
    """Header stamp (ns) of a serialised message whose first field is ``std_msgs/Header``.

    CDR: 4-byte encapsulation header (byte 1 = 1 little endian, 0 big endian), then
    ``stamp.sec`` (int32) and ``stamp.nanosec`` (uint32).
    """
    endian = '<' if raw[1] == 1 else '>'
    sec, nsec = struct.unpack_from(endian + 'iI', raw, 4)
    return sec * 1_000_000_000 + nsec


def _match(stamps_ns: list[int], keys: list[int]) -> list[int | None]:
    """For each stamp, the key within ``MATCH_TOL_NS`` of it (nearest), else None."""
    if not keys:
        return [None] * len(stamps_ns)
    arr = np.array(sorted(keys), dtype=np.int64)
    out: list[int | None] = []
    for t in stamps_ns:
        i = int(np.searchsorted(arr, t))
        best = min((j for j in (i - 1, i) if 0 <= j < len(arr)), key=lambda j: abs(arr[j] - t))
        out.append(int(arr[best]) if abs(int(arr[best]) - t) <= MATCH_TOL_NS else None)
    return out


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def live_evaluate(model, bag, out_dir, *, image_topic: str | None = None,
                  pose_topic: str | None = None, tf: tuple[str, str] | None = None,
                  max_gap=None, rate: float = 1.0, device: str = 'cpu',
                  train_dataset=None, baselines: bool = True, nn_features: str = 'auto',
                  progress: bool = True, node_params: dict | None = None,
                  startup_timeout: float = 120.0, settle: float = 2.0,
                  domain_id: int | None = None, title: str | None = None,
                  map_path=None) -> dict:
    """Evaluate the live node on ``bag``; write the report to ``out_dir``; return its summary.

    Args:
        model: exported model the node loads (``model_path``).
        bag, image_topic, pose_topic, tf, max_gap: the bag and its ground truth, as in
            :func:`posenet_ros.evaluation.evaluate.evaluate`.
        rate: playback speed factor (1 = recorded frame rate). Frames arriving faster than
            the node infers are dropped by the node and count as failures.
        device: the node's ``device`` parameter.
        train_dataset, baselines, nn_features: baselines on the same frames, as offline.
        node_params: extra node parameters (``-p name:=value``).
        startup_timeout: longest wait (s) for the node to load, warm up and subscribe.
        settle: seconds without a new pose, after the last image, before stopping.
        domain_id: ROS_DOMAIN_ID of the private session (default: random 1-101, localhost
            discovery only, so no other ROS system on this machine interferes).
        map_path: scene map: run the node with ``refine: continuous`` and score its verified
            poses too.
    """
    from posenet_ros.evaluation.builder import Baselines, ReportBuilder
    from posenet_ros.model.export import read_metadata

    if rate < 0:
        raise EvaluationError(f'rate must be >= 0, got {rate}')
    model = Path(model).resolve()
    map_path = None if map_path is None else Path(map_path).resolve()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = read_metadata(model)
    notes: list[str] = []
    base = Baselines.prepare(model, meta, notes, train_dataset=train_dataset,
                             nn_features=nn_features) if baselines else Baselines()
    report = ReportBuilder(model, meta, device=device, baselines=base, notes=notes)
    # Ground truth (and the baselines' features) first: a bad bag fails before any process starts.
    stats = _read_ground_truth(report, bag, image_topic, pose_topic, tf, max_gap, progress)
    report.describe_bag(bag, stats, image_topic, max_gap)
    report.source['mode'] = f'live node, replay rate {rate}'
    params, play_topics = _node_setup(model, device, stats.image_topic, bag, map_path,
                                      node_params, notes)
    recorder = _Recorder(stats.image_topic)
    with _LiveSession(params, out, domain_id) as session:
        recorder.subscribe(session.node, verifying=map_path is not None)
        session.start_spinning()
        _play(session, recorder, bag, play_topics, rate=rate, startup_timeout=startup_timeout,
              settle=settle, verifying=map_path is not None)
    n_published = _add_live_methods(report, recorder, device, map_path)
    _add_live_sections(report, recorder, rate, session, n_published)
    return report.write(out, title or f'Live evaluation of {model.name}', progress)


def _read_ground_truth(report, bag, image_topic, pose_topic, tf, max_gap, progress):
    """Record the bag's labelled frames in ``report``; return the bag reader's stats."""
    from posenet_ros.core.progress import progress as _progress
    from posenet_ros.datasets.rosbag_reader import BagDataset

    with BagDataset(bag, image_topic=image_topic, pose_topic=pose_topic, tf=tf,
                    max_gap=max_gap, split='test') as ds:
        for s in _progress(ds, desc='ground truth', unit='frame', disable=not progress):
            report.add_frame(s, s.image)
        ds.check_overlap()
        return ds.stats


def _node_setup(model: Path, device: str, image_topic: str, bag, map_path: Path | None,
                node_params: dict | None, notes: list[str]) -> tuple[dict, list[str]]:
    """``(node parameters, topics to play)`` for the node under test."""
    transport = 'compressed' if image_topic.endswith('/compressed') else 'raw'
    base_topic = image_topic[:-len('/compressed')] if transport == 'compressed' else image_topic
    params = {'model_path': str(model), 'device': device, 'image_topic': base_topic,
              'image_transport': transport, 'max_image_age': 0.0, 'tf_mode': 'none',
              'continuous': True, 'refine': 'off', **(node_params or {})}
    play_topics = [image_topic]
    if map_path is not None:
        params.update(refine='continuous', map_path=str(map_path))
        info_topic = camera_info_topic(image_topic)
        if info_topic in _bag_topics(bag):
            play_topics.append(info_topic)
            params['camera_info_topic'] = info_topic
        else:
            notes.append(f"the bag has no {info_topic}: the node used the map's intrinsics")
    return params, play_topics


class _LiveSession:
    """A private ROS session: the node as a child process, and this process's own rclpy node.

    Own DDS domain and localhost discovery, so no other ROS system on this machine takes part;
    rcl writes a log file per process into ``out/ros_log`` unless ``ROS_LOG_DIR`` is set. The
    spin thread runs the subscriptions' callbacks until the session ends.
    """

    def __init__(self, params: dict, out: Path, domain_id: int | None = None):
        self.domain = int(domain_id or random.randint(1, 101))
        self.node_log = out / 'node.log'
        self.env = dict(os.environ)
        self.env.update({'ROS_DOMAIN_ID': str(self.domain),
                         'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
                         'PYTHONUNBUFFERED': '1', 'RCUTILS_COLORIZED_OUTPUT': '0'})
        self.env.setdefault('ROS_LOG_DIR', str(out / 'ros_log'))
        self.env.pop('ROS_STATIC_PEERS', None)
        self.params = params
        self.proc = self.ctx = self.node = self.executor = self._spinner = None
        self._stop = threading.Event()
        self._old_range = None

    def __enter__(self) -> _LiveSession:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self._old_range = os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE')
        os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
        try:
            self.proc = NodeProcess(self.params, self.env, self.node_log)
            self.ctx = Context()
            rclpy.init(context=self.ctx, domain_id=self.domain)
            self.node = rclpy.create_node('posenet_live_eval', context=self.ctx)
            self.executor = SingleThreadedExecutor(context=self.ctx)
            self.executor.add_node(self.node)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def start_spinning(self) -> None:
        """Run the executor in a background thread until the session ends."""
        def spin():
            while not self._stop.is_set():
                self.executor.spin_once(timeout_sec=0.05)

        self._spinner = threading.Thread(target=spin, daemon=True)
        self._spinner.start()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._spinner is not None:
            self._spinner.join(timeout=5)
        if self.proc is not None:
            self.proc.stop()
        if self.executor is not None:
            self.executor.shutdown(timeout_sec=1.0)
        if self.node is not None:
            self.node.destroy_node()
        if self.ctx is not None:
            self.ctx.try_shutdown()
        _restore_env('ROS_AUTOMATIC_DISCOVERY_RANGE', self._old_range)


class _Recorder:
    """What the node publishes, keyed by header stamp (ns), with this process's receipt times.

    Times are ``time.monotonic()`` of this process, for the publish and the receipt alike. The
    subscription callbacks run in the session's spin thread and ``on_publish`` in the
    player's (the caller's): ``lock`` guards every dict and ``last_rx``.
    """

    def __init__(self, image_topic: str):
        self.image_topic = image_topic
        self.published: dict[int, float] = {}  # image stamp -> publish time
        self.poses: dict[int, tuple[float, np.ndarray, np.ndarray]] = {}  # (t, xyz, wxyz)
        self.verified: dict[int, tuple[float, np.ndarray, np.ndarray]] = {}
        self.diagnostics: dict[str, str] = {}  # the node's last relocalization status values
        self.lock = threading.Lock()
        self.last_rx = time.monotonic()

    def subscribe(self, node, verifying: bool) -> None:
        """Subscribe ``node`` to the poses (and with ``verifying`` the verified poses)."""
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000,
                              reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(PoseStamped, POSE_TOPIC,
                                 self._storing(self.poses), reliable)
        if verifying:
            node.create_subscription(PoseWithCovarianceStamped, VERIFIED_TOPIC,
                                     self._storing(self.verified), reliable)
            node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                     reliable)

    def _storing(self, store: dict):
        """Callback storing (receipt time, position, wxyz) by header stamp in ``store``."""
        def on_msg(msg):
            t = time.monotonic()
            position, q_wxyz = msg_to_pose(msg)
            with self.lock:
                store.setdefault(stamp_to_ns(msg.header.stamp), (t, position, q_wxyz))
                self.last_rx = t
        return on_msg

    def _on_diagnostics(self, msg) -> None:
        for st in msg.status:
            # exactly this node's status: another node in the same domain (random ids can
            # collide) publishes /<ns>/posenet_relocalizer: relocalization
            if st.name == DIAGNOSTICS_NAME:
                with self.lock:
                    self.diagnostics = {kv.key: kv.value for kv in st.values}

    def on_publish(self, topic, msgtype, raw, t) -> None:
        """``BagPlayer`` hook: the publish time of each image (camera_info has the same stamps)."""
        if topic == self.image_topic:
            with self.lock:
                self.published.setdefault(header_stamp_ns(raw), t)


def _play(session: _LiveSession, rec: _Recorder, bag, topics: list[str], *, rate: float,
          startup_timeout: float, settle: float, verifying: bool) -> None:
    """Wait for the node, play the bag into it, and wait for the frames in flight."""
    from posenet_ros.ros.replay import BagPlayer

    player = BagPlayer(session.node, bag, topics=topics, rate=rate, on_publish=rec.on_publish)
    try:
        _wait_for_node(session, player.publishers[0], rec.image_topic, startup_timeout)
        player.play(wait=0, grace=1.0)
        play_end = time.monotonic()
        # Let the node finish the frames in flight: stop after `settle` s without a new pose.
        end = time.monotonic() + 60.0
        while time.monotonic() < end:
            with rec.lock:
                # with verification, the verified poses come later: wait for quiet
                done = len(rec.poses) >= len(rec.published) and not verifying
                quiet = time.monotonic() - max(rec.last_rx, play_end) > settle
            if done or quiet or not session.proc.alive():
                break
            time.sleep(0.05)
    finally:
        player.close()


def _wait_for_node(session: _LiveSession, pub, image_topic: str, timeout: float) -> None:
    """Until the node subscribes to the images and publishes poses (model loaded and warm)."""
    proc, node_log = session.proc, session.node_log
    deadline = time.monotonic() + timeout
    while pub.get_subscription_count() == 0 or session.node.count_publishers(POSE_TOPIC) == 0:
        if not proc.alive():
            raise EvaluationError(f'the relocalization node exited during start-up '
                                  f'(code {proc.proc.returncode}); its log ({node_log}):\n'
                                  f'{proc.tail()}')
        if time.monotonic() > deadline:
            raise EvaluationError(f'the node did not subscribe to {image_topic} within '
                                  f'{timeout} s; its log ({node_log}):\n{proc.tail()}')
        time.sleep(0.05)


def _live_method(description: str, stamps: list[int], store: dict, rec: _Recorder,
                 published_of: list[int | None]) -> MethodResult:
    """The poses of ``store`` matched to the frames; ms = image publish -> pose receipt."""
    m = MethodResult.empty(len(stamps), description)
    for i, key in enumerate(_match(stamps, list(store))):
        if key is None:
            continue
        t_rx, p, q = store[key]
        m.valid[i] = bool(np.all(np.isfinite(p)) and np.all(np.isfinite(q)))
        m.positions[i] = p
        m.quaternions[i] = canonicalize_quaternion(q) if m.valid[i] else q
        if published_of[i] is not None:
            m.ms[i] = (t_rx - rec.published[published_of[i]]) * 1e3
    return m


def _add_live_methods(report, rec: _Recorder, device: str, map_path: Path | None) -> int:
    """``posenet_live`` (and ``refined_live`` with its verification section) in ``report``.

    Returns how many of the frames with ground truth were published.
    """
    # Sample stamps are float seconds (~0.2 us resolution at epoch times): match to the exact
    # integer header stamps of the published images / received poses within MATCH_TOL_NS.
    stamps = [int(round(t * 1e9)) for t in report.ground_truth().stamps]
    published_of = _match(stamps, list(rec.published))
    m = report.add_method(f'{MODEL_METHOD}_live', _live_method(
        f'live node {NODE_MODULE} with {report.model_label} on {device}; ms = end-to-end '
        'latency (image publish -> pose receipt)', stamps, rec.poses, rec, published_of))
    m.extra['e2e_ms'] = m.ms.copy()
    n_published = sum(k is not None for k in published_of)
    if map_path is None:
        return n_published
    r = _live_method(f'refined poses the node verified against {map_path.name} '
                     '(~/verified_pose, refine: continuous); frames without one count as '
                     'failures; ms = image publish -> verified pose', stamps, rec.verified, rec,
                     published_of)

    def diag_ms(key):
        try:
            return float(rec.diagnostics.get(key, 'nan'))
        except ValueError:
            return math.nan

    section = report.add_verification(
        'refined_live', r, coarse=m, map_path=map_path,
        statuses=['verified' if ok else 'unverified' for ok in r.valid],
        inliers=np.full(len(stamps), np.nan),
        stages={'total': {'p50': diag_ms('refine_ms_p50'), 'p95': diag_ms('refine_ms_p95')}})
    section['node_diagnostics'] = dict(rec.diagnostics)
    report.notes.append('live verification: frames without a verified pose (unverified, '
                        'rejected or skipped while the verification thread was busy) count as '
                        "unverified; refinement ms are the node's own (diagnostics "
                        'refine_ms_p50/p95)')
    return n_published


def _add_live_sections(report, rec: _Recorder, rate: float, session: _LiveSession,
                       n_pub: int) -> None:
    """The ``live`` and ``latency`` sections of the summary, and the notes on dropped frames."""
    from posenet_ros.evaluation.metrics import percentile_inf

    m = report.methods[f'{MODEL_METHOD}_live']
    n_rx = int(m.valid.sum())
    e2e = m.extra['e2e_ms'][np.isfinite(m.extra['e2e_ms'])]
    p50, p95 = percentile_inf(e2e, 50), percentile_inf(e2e, 95)
    report.sections['live'] = {
        'rate': rate, 'frames_published': len(rec.published),
        'frames_with_ground_truth': report.n_frames, 'poses_received': len(rec.poses),
        'frames_dropped_by_node': n_pub - n_rx, 'e2e_ms': {'p50': p50, 'p95': p95},
        'node_log': session.node_log.name, 'domain_id': session.domain}
    report.sections['latency'] = {'p50_ms': p50, 'p95_ms': p95,
                                  'p99_ms': percentile_inf(e2e, 99), 'n': int(e2e.size),
                                  'what': 'end-to-end: image publish -> pose receipt'}
    report.notes.append(f'{n_pub - n_rx} of {n_pub} published frames got no pose (dropped by '
                        'the node: its input keeps only the newest frame); they count as '
                        'failures. Lower --rate to measure accuracy without drops.')
    if not math.isfinite(p50):
        report.notes.append('no pose was received from the node; see node.log')


def _bag_topics(bag) -> set[str]:
    """Topic names of a rosbag2 folder or file."""
    from posenet_ros.datasets.bagio import bag_reader

    with bag_reader(bag, typed=False) as (reader, _):
        return set(reader.topics)
