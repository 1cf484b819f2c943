"""Live evaluation: play a bag into the RUNNING relocalization node and score what it publishes.

:func:`live_evaluate` starts the node (``posenet_ros.ros.relocalize_node``) as a child process
on a private DDS domain, waits until it subscribes to the image topic (model loaded and warm),
publishes the bag's images with their recorded timing (``BagPlayer``), records every
``~/pose`` (``PoseStamped`` stamped with the image stamp) and writes the same report as
``posenet-ros evaluate`` (``posenet_ros.evaluation.report.write_report``), plus the **end-to-end
latency** of each frame = pose receipt time - image publish time (one monotonic clock, this
process), which includes DDS transport both ways, image conversion, inference and the node's
queueing. Frames the node dropped (its camera input keeps only the newest frame) have no pose
and count as failures; the report says how many.

With a scene map (``map_path``, ``posenet-ros evaluate --live --map MAP``) the node runs with
``refine: continuous``: the bag's ``camera_info`` (beside the image topic) is played too, every
``~/verified_pose`` is recorded, and the report gets the ``refined_live`` method and the same
``verification`` section as offline evaluation (frames without a verified pose count as
unverified, including those the verification thread skipped while busy).

``posenet-ros evaluate --live --model M --bag B ...`` calls it.
"""

from __future__ import annotations

import math
import os
import random
import struct
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from posenet_ros.core.errors import EvaluationError
from posenet_ros.core.geometry import canonicalize_quaternion, xyzw_to_wxyz
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


def _collect_ground_truth(bag, image_topic, pose_topic, tf, max_gap, extractor, progress):
    """Stamps (ns), names, true poses and (optional) NN features of the bag's labelled frames."""
    from posenet_ros.core.progress import progress as _progress
    from posenet_ros.datasets.rosbag_reader import BagDataset

    stamps, names, pos, quat, feats = [], [], [], [], []
    with BagDataset(bag, image_topic=image_topic, pose_topic=pose_topic, tf=tf,
                    max_gap=max_gap, split='test') as ds:
        for s in _progress(ds, desc='ground truth', unit='frame', disable=not progress):
            stamps.append(int(round(s.stamp * 1e9)))
            names.append(s.name)
            pos.append(s.position)
            quat.append(s.quaternion)
            if extractor is not None:
                feats.append(extractor([s.image])[0])
        ds.check_overlap()
        stats = ds.stats
    return stamps, names, np.array(pos), np.array(quat), feats, stats


def live_evaluate(model, bag, out_dir, *, image_topic: str | None = None,
                  pose_topic: str | None = None, tf: tuple[str, str] | None = None,
                  max_gap: float = 0.1, rate: float = 1.0, device: str = 'cpu',
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
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    from posenet_ros.evaluation.metrics import percentile_inf
    from posenet_ros.evaluation.report import (
        MODEL_METHOD,
        GroundTruth,
        MethodResult,
        add_baselines,
        baseline_training_set,
        verification_summary,
        write_report,
    )
    from posenet_ros.model.export import read_metadata
    from posenet_ros.ros.replay import BagPlayer

    if rate < 0:
        raise EvaluationError(f'rate must be >= 0, got {rate}')
    model = Path(model).resolve()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = read_metadata(model)
    notes: list[str] = []

    # Ground truth (and baselines' features) first: a bad bag fails before any process starts.
    train, train_src = ([], '')
    if baselines:
        train, train_src = baseline_training_set(None, 'test', train_dataset, meta, notes)
    extractor = None
    if train:
        from posenet_ros.evaluation.baselines import feature_extractor

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            extractor = feature_extractor(model, meta, nn_features, 'cpu')
        notes += [str(c.message) for c in caught if 'nearest-neighbour' in str(c.message)]
    stamps, names, gt_pos, gt_quat, feats, bag_stats = _collect_ground_truth(
        bag, image_topic, pose_topic, tf, max_gap, extractor, progress)
    image_topic = bag_stats.image_topic
    transport = 'compressed' if image_topic.endswith('/compressed') else 'raw'
    base_topic = image_topic[:-len('/compressed')] if transport == 'compressed' else image_topic

    # Private ROS session: own domain, localhost discovery, own log dir.
    domain = int(domain_id or random.randint(1, 101))
    env = dict(os.environ)
    env.update({'ROS_DOMAIN_ID': str(domain), 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
                'PYTHONUNBUFFERED': '1', 'RCUTILS_COLORIZED_OUTPUT': '0'})
    env.setdefault('ROS_LOG_DIR', str(out / 'ros_log'))  # rcl writes a log file per process
    env.pop('ROS_STATIC_PEERS', None)
    old_range = os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE')
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    params = {'model_path': str(model), 'device': device, 'image_topic': base_topic,
              'image_transport': transport, 'max_image_age': 0.0, 'tf_mode': 'none',
              'continuous': True, 'refine': 'off', **(node_params or {})}
    play_topics = [image_topic]
    if map_path is not None:
        map_path = Path(map_path).resolve()
        params.update(refine='continuous', map_path=str(map_path))
        info_topic = base_topic.rstrip('/').rsplit('/', 1)[0] + '/camera_info'
        if info_topic in _bag_topics(bag):
            play_topics.append(info_topic)
            params['camera_info_topic'] = info_topic
        else:
            notes.append(f"the bag has no {info_topic}: the node used the map's intrinsics")
    node_log = out / 'node.log'
    proc = NodeProcess(params, env, node_log)
    ctx = node = executor = None
    try:
        ctx = Context()
        rclpy.init(context=ctx, domain_id=domain)
        node = rclpy.create_node('posenet_live_eval', context=ctx)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(node)
    except BaseException:
        proc.stop()
        if ctx is not None:
            ctx.try_shutdown()
        _restore_env('ROS_AUTOMATIC_DISCOVERY_RANGE', old_range)
        raise
    publish_t: dict[int, float] = {}
    received: dict[int, tuple[float, np.ndarray, np.ndarray]] = {}
    verified: dict[int, tuple[float, np.ndarray, np.ndarray]] = {}
    last_diag: dict[str, str] = {}
    lock = threading.Lock()
    last_rx = [time.monotonic()]

    def recorder(store: dict, pose_of):
        """Callback storing (receipt time, position, wxyz) by header stamp (ns) in ``store``."""
        def on_msg(msg):
            t = time.monotonic()
            key = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            pose = pose_of(msg)
            p, o = pose.position, pose.orientation
            with lock:
                store.setdefault(key, (t, np.array([p.x, p.y, p.z]),
                                       xyzw_to_wxyz(np.array([o.x, o.y, o.z, o.w]))))
                last_rx[0] = t
        return on_msg

    on_pose = recorder(received, lambda m: m.pose)  # PoseStamped
    on_verified = recorder(verified, lambda m: m.pose.pose)  # PoseWithCovarianceStamped

    def on_diag(msg):
        for st in msg.status:
            # exactly this node's status: another node in the same domain (random ids can
            # collide) publishes /<ns>/posenet_relocalizer: relocalization
            if st.name == DIAGNOSTICS_NAME:
                last_diag.clear()
                last_diag.update({kv.key: kv.value for kv in st.values})

    def on_publish(topic, msgtype, raw, t):
        if topic == image_topic:  # camera_info carries the same stamps
            publish_t.setdefault(header_stamp_ns(raw), t)

    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped

    reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000,
                          reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(PoseStamped, POSE_TOPIC, on_pose, reliable)
    if map_path is not None:
        node.create_subscription(PoseWithCovarianceStamped, VERIFIED_TOPIC, on_verified, reliable)
        node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, reliable)
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.05)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    player = None
    try:
        player = BagPlayer(node, bag, topics=play_topics, rate=rate, on_publish=on_publish)
        pub = player.publishers[0]
        deadline = time.monotonic() + startup_timeout
        while pub.get_subscription_count() == 0 or node.count_publishers(POSE_TOPIC) == 0:
            if not proc.alive():
                raise EvaluationError(f'the relocalization node exited during start-up '
                                      f'(code {proc.proc.returncode}); its log ({node_log}):\n'
                                      f'{proc.tail()}')
            if time.monotonic() > deadline:
                raise EvaluationError(f'the node did not subscribe to {image_topic} within '
                                      f'{startup_timeout} s; its log ({node_log}):\n{proc.tail()}')
            time.sleep(0.05)
        player.play(wait=0, grace=1.0)
        play_end = time.monotonic()
        # Let the node finish the frames in flight: stop after `settle` s without a new pose.
        end = time.monotonic() + 60.0
        while time.monotonic() < end:
            with lock:
                # with verification, the verified poses come later: wait for quiet
                done = len(received) >= len(publish_t) and map_path is None
                quiet = time.monotonic() - max(last_rx[0], play_end) > settle
            if done or quiet or not proc.alive():
                break
            time.sleep(0.05)
    finally:
        stop.set()
        spinner.join(timeout=5)
        if player is not None:
            player.close()
        proc.stop()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        ctx.try_shutdown()
        _restore_env('ROS_AUTOMATIC_DISCOVERY_RANGE', old_range)

    n = len(stamps)
    m = MethodResult.empty(n, f'live node {NODE_MODULE} with {model.name} '
                              f'({meta.get("backbone")}, model_id {meta.get("model_id")}) on '
                              f'{device}; ms = end-to-end latency (image publish -> pose '
                              'receipt)')
    m.extra['e2e_ms'] = np.full(n, np.nan)
    # Sample stamps are float seconds (~0.2 us resolution at epoch times): match to the exact
    # integer header stamps of the published images / received poses within MATCH_TOL_NS.
    rx_of = _match(stamps, list(received))
    pub_of = _match(stamps, list(publish_t))
    for i in range(n):
        key = rx_of[i]
        if key is None:
            continue
        t_rx, p, q = received[key]
        m.valid[i] = bool(np.all(np.isfinite(p)) and np.all(np.isfinite(q)))
        m.positions[i] = p
        m.quaternions[i] = canonicalize_quaternion(q) if m.valid[i] else q
        if pub_of[i] is not None:
            m.ms[i] = m.extra['e2e_ms'][i] = (t_rx - publish_t[pub_of[i]]) * 1e3
    methods = {f'{MODEL_METHOD}_live': m}
    gt = GroundTruth(names, np.asarray(stamps, np.float64) / 1e9, gt_pos, gt_quat)
    extra: dict = {}
    if map_path is not None:
        r = MethodResult.empty(n, f'refined poses the node verified against {map_path.name} '
                                  '(~/verified_pose, refine: continuous); frames without one '
                                  'count as failures; ms = image publish -> verified pose')
        for i, key in enumerate(_match(stamps, list(verified))):
            if key is None:
                continue
            t_rx, p, q = verified[key]
            r.valid[i] = True
            r.positions[i], r.quaternions[i] = p, canonicalize_quaternion(q)
            if pub_of[i] is not None:
                r.ms[i] = (t_rx - publish_t[pub_of[i]]) * 1e3
        methods['refined_live'] = r

        def diag_ms(key):
            try:
                return float(last_diag.get(key, 'nan'))
            except ValueError:
                return math.nan

        stages = {'total': {'p50': diag_ms('refine_ms_p50'), 'p95': diag_ms('refine_ms_p95')}}
        statuses = ['verified' if ok else 'unverified' for ok in r.valid]
        extra['verification'] = verification_summary(m, r, gt, map_path, statuses,
                                                      np.full(n, np.nan), stages)
        extra['verification']['node_diagnostics'] = dict(last_diag)
        notes.append('live verification: frames without a verified pose (unverified, rejected '
                     'or skipped while the verification thread was busy) count as unverified; '
                     "refinement ms are the node's own (diagnostics refine_ms_p50/p95)")
    if train:
        add_baselines(methods, train, extractor, feats, n, progress, train_src)
    n_pub = sum(k is not None for k in pub_of)
    n_rx = int(m.valid.sum())
    e2e = m.extra['e2e_ms'][np.isfinite(m.extra['e2e_ms'])]
    live = {'rate': rate, 'frames_published': len(publish_t), 'frames_with_ground_truth': n,
            'poses_received': len(received), 'frames_dropped_by_node': n_pub - n_rx,
            'e2e_ms': {'p50': percentile_inf(e2e, 50), 'p95': percentile_inf(e2e, 95)},
            'node_log': node_log.name, 'domain_id': domain}
    notes.append(f'{n_pub - n_rx} of {n_pub} published frames got no pose (dropped by the '
                 'node: its input keeps only the newest frame); they count as failures. Lower '
                 '--rate to measure accuracy without drops.')
    source = {'model': str(model), 'model_id': meta.get('model_id'),
              'backbone': meta.get('backbone'), 'device': device, 'bag': str(bag),
              'image_topic': image_topic, 'pose_source': bag_stats.pose_source,
              'mode': f'live node, replay rate {rate}'}
    if train_src:
        source['baseline_training_set'] = f'{train_src} ({len(train)} frames)'
    train_pos = np.array([s.position for s in train]) if train else None
    if not math.isfinite(live['e2e_ms']['p50']):
        notes.append('no pose was received from the node; see node.log')
    latency = {'p50_ms': live['e2e_ms']['p50'], 'p95_ms': live['e2e_ms']['p95'],
               'p99_ms': percentile_inf(e2e, 99), 'n': int(e2e.size),
               'what': 'end-to-end: image publish -> pose receipt'}
    return write_report(out, gt, methods, train_positions=train_pos, notes=notes,
                        title=title or f'Live evaluation of {model.name}', source=source,
                        extra_summary={'live': live, 'latency': latency, **extra})


def _bag_topics(bag) -> set[str]:
    """Topic names of a rosbag2 folder or file."""
    from posenet_ros.datasets.bagio import bag_reader

    with bag_reader(bag, typed=False) as (reader, _):
        return set(reader.topics)
