"""Replay delivers every message of a bag, in order and byte-identical, to another process."""

import hashlib
import json
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip('rclpy')

from ros_helpers import ROOT, RosSession  # noqa: E402

from posenet_ros.tools.synthetic import SceneConfig, write_bag  # noqa: E402

# A subscriber in its own process: records (topic, sha1 of the raw CDR) in arrival order.
SUBSCRIBER = textwrap.dedent("""
    import hashlib, json, sys, time
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy, HistoryPolicy
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import Image
    from tf2_msgs.msg import TFMessage
    from rosgraph_msgs.msg import Clock
    from posenet_ros.core.ros_conversions import stamp_to_ns

    out_path, expected = sys.argv[1], int(sys.argv[2])
    rclpy.init()
    node = rclpy.create_node('replay_test_sub')
    got = []
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000,
                     reliability=ReliabilityPolicy.RELIABLE)
    static_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                            reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)
    def cb(topic):
        return lambda raw: got.append([topic, hashlib.sha1(raw).hexdigest()])
    subs = [node.create_subscription(Image, '/cam', cb('/cam'), qos, raw=True),
            node.create_subscription(PoseStamped, '/ground_truth/pose',
                                     cb('/ground_truth/pose'), qos, raw=True),
            node.create_subscription(TFMessage, '/tf_static', cb('/tf_static'), static_qos,
                                     raw=True)]
    clock = []
    subs.append(node.create_subscription(
        Clock, '/clock', lambda m: clock.append(stamp_to_ns(m.clock)), 100))
    print('READY', flush=True)
    deadline = time.monotonic() + 60
    while len(got) < expected and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    end = time.monotonic() + 0.5  # catch duplicates / extras
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    json.dump({'got': got, 'clock_max': max(clock, default=0), 'n_clock': len(clock)},
              open(out_path, 'w'))
    rclpy.shutdown()
""")


def _bag_messages(bag, topics):
    from rosbags.rosbag2 import Reader

    out = {t: [] for t in topics}
    with Reader(bag) as reader:
        for conn, _, raw in reader.messages():
            if conn.topic in out:
                out[conn.topic].append(hashlib.sha1(bytes(raw)).hexdigest())
    return out


CFG = SceneConfig(width=64, height=48, fx=55.0, n_train=5, n_test=40, rate=30.0)


@pytest.fixture(scope='module')
def bag(tmp_path_factory):
    return write_bag(tmp_path_factory.mktemp('replay') / 'bag', CFG, progress=False)


@pytest.mark.slow
def test_replay_delivers_every_message_in_order(bag, tmp_path):
    topics = ['/camera/image_raw', '/ground_truth/pose', '/tf_static']
    want = _bag_messages(bag, topics)
    expected = sum(len(v) for v in want.values())
    with RosSession() as session:
        env = session.env()
        script = tmp_path / 'sub.py'
        script.write_text(SUBSCRIBER)
        out = tmp_path / 'got.json'
        sub = subprocess.Popen([sys.executable, str(script), str(out), str(expected)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert sub.stdout.readline().strip() == 'READY'
            t0 = time.monotonic()
            rep = subprocess.run(
                [sys.executable, '-m', 'posenet_ros.cli', 'replay', str(bag), '--rate', '3',
                 '--remap', '/camera/image_raw:/cam', '--clock', '--topics', *topics],
                env=env, capture_output=True, text=True, timeout=90, cwd=str(ROOT))
            assert rep.returncode == 0, rep.stderr
            # 40 frames at 30 Hz played 3x faster: about 0.45 s of messages after the grace.
            assert time.monotonic() - t0 > 1.0 + 39 / 30 / 3 * 0.9
            sub.wait(timeout=60)
        finally:
            if sub.poll() is None:
                sub.kill()
        result = json.loads(out.read_text())
    got = result['got']
    by_topic = {'/camera/image_raw': [], '/ground_truth/pose': [], '/tf_static': []}
    for topic, digest in got:
        by_topic['/camera/image_raw' if topic == '/cam' else topic].append(digest)
    assert by_topic == want  # every message, in order, byte-identical, nothing extra
    assert len(want['/camera/image_raw']) == 40
    # /clock carried the bag time, up to the last replayed message's record time.
    last_ns = int(round((CFG.start_time + (CFG.n_test - 1) / CFG.rate) * 1e9))
    assert result['n_clock'] >= 40
    assert abs(result['clock_max'] - last_ns) < 1_000_000


def test_replay_names_the_bag_topics_on_a_wrong_topic(bag):
    with RosSession() as session:
        rep = subprocess.run(
            [sys.executable, '-m', 'posenet_ros.cli', 'replay', str(bag), '--topics', '/nope',
             '--wait', '0'], env=session.env(), capture_output=True, text=True, timeout=60,
            cwd=str(ROOT))
    assert rep.returncode == 1
    assert '/nope' in rep.stderr and '/camera/image_raw [sensor_msgs/msg/Image]' in rep.stderr


def test_replay_list(bag):
    rep = subprocess.run([sys.executable, '-m', 'posenet_ros.cli', 'replay', str(bag), '--list'],
                         capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert rep.returncode == 0, rep.stderr
    assert '/camera/image_raw  [sensor_msgs/msg/Image]  40 messages' in rep.stdout
