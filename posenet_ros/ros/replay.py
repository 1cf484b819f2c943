"""``posenet-ros replay BAG``: publish a rosbag2's topics onto live ROS 2 topics (rclpy).

A stand-in for ``ros2 bag play`` where rosbag2_py is not installed (e.g. ROS 2 from PyPI).
Messages are published as the raw CDR bytes stored in the bag (``Publisher.publish(bytes)``;
bag bytes are rclpy's serialisation), so nothing is converted and header stamps are the
recorded ones. Message classes are looked up from the type names in the bag's metadata.

Delivery: publishers are RELIABLE, KEEP_LAST ``qos_depth`` (``/tf_static`` and topics recorded
as transient-local stay TRANSIENT_LOCAL). Before playing, the player waits until a subscriber
has matched (``wait`` seconds at most), then a grace period (``grace``, ~1 s) so late
discoveries complete; after the last message it waits for every reliable subscriber to
acknowledge (``wait_for_all_acked``). A best-effort subscriber (e.g. a camera input with
depth 1) matches these publishers too, but may drop frames by design.

``--clock`` publishes ``/clock`` (``rosgraph_msgs/Clock``) with the bag's record time for
nodes running with ``use_sim_time:=true``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from posenet_ros.core.errors import BagError, EvaluationError
from posenet_ros.core.ros_conversions import fill_stamp
from posenet_ros.datasets.bagio import iter_messages, open_reader, topic_counts

__all__ = ['BagPlayer', 'PlayStats', 'message_class', 'parse_remaps', 'main']

CLOCK_PERIOD = 0.01  # s between /clock messages while waiting for the next message


def message_class(msgtype: str):
    """The rclpy message class of a type name like ``sensor_msgs/msg/Image``."""
    parts = msgtype.split('/')
    if len(parts) == 2:  # 'pkg/Type' (ROS 1 style names)
        parts = [parts[0], 'msg', parts[1]]
    if len(parts) != 3:
        raise BagError(f'cannot parse message type {msgtype!r}')
    pkg, kind, name = parts
    try:
        module = importlib.import_module(f'{pkg}.{kind}')
        return getattr(module, name)
    except (ImportError, AttributeError):
        raise BagError(f'message type {msgtype} is not installed in this Python environment; '
                       f'install the {pkg} interface package or leave the topic out with '
                       '--topics') from None


def parse_remaps(items: Sequence[str] | None) -> dict[str, str]:
    """``['OLD:NEW', ...]`` -> ``{OLD: NEW}``."""
    out = {}
    for item in items or ():
        old, sep, new = item.partition(':')
        if not sep or not old or not new:
            raise EvaluationError(f'--remap expects OLD:NEW, got {item!r}')
        out[old] = new
    return out


@dataclass
class PlayStats:
    """What a playback did."""

    published: dict = field(default_factory=dict)  # output topic -> count
    skipped_topics: list = field(default_factory=list)  # topics whose type is not installed
    duration_s: float = 0.0
    bag_duration_s: float = 0.0
    loops: int = 0
    subscribers_matched: bool = False
    all_acked: bool = True


def _is_transient_local(topic: str, conn) -> bool:
    if topic == '/tf_static':
        return True
    for q in getattr(getattr(conn, 'ext', None), 'offered_qos_profiles', None) or ():
        dur = getattr(q, 'durability', None)
        if dur is not None and ('TRANSIENT_LOCAL' in str(dur).upper() or str(dur) == '1'):
            return True
    return False


class BagPlayer:
    """Publishes a bag through an rclpy node; see the module docstring.

    Args:
        node: the rclpy node that owns the publishers.
        bag: rosbag2 folder (or its .db3/.mcap file).
        topics: bag topics to play (default: every topic whose message type is installed).
        remap: ``{bag topic: published topic}``.
        rate: playback speed factor (1 = recorded timing; 0 = as fast as possible).
        clock: also publish ``/clock`` with the bag time.
        qos_depth: history depth of the reliable publishers.
        on_publish: ``callback(topic, msgtype, raw_bytes, t_monotonic)`` after each publish
            (``topic`` is the published name), e.g. to time end-to-end latency.
    """

    def __init__(self, node, bag, topics: Sequence[str] | None = None,
                 remap: dict[str, str] | None = None, rate: float = 1.0, clock: bool = False,
                 qos_depth: int = 100,
                 on_publish: Callable[[str, str, bytes, float], None] | None = None):
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        if rate < 0:
            raise EvaluationError(f'rate must be >= 0 (0 = as fast as possible), got {rate}')
        if qos_depth < 1:
            raise EvaluationError(f'qos_depth must be >= 1, got {qos_depth}')
        self.node = node
        self.rate = float(rate)
        self.remap = dict(remap or {})
        self.on_publish = on_publish
        self.stats = PlayStats()
        # raw bytes of any message type: the untyped reader, with the damaged-bag checks
        self._reader, self.bag = open_reader(bag, typed=False)
        conns = list(self._reader.connections)
        available = {c.topic: c.msgtype for c in conns}
        listing = ', '.join(f'{t} [{m}]' for t, m in sorted(available.items())) or 'none'
        unknown = sorted(set(topics or ()) - set(available))
        if unknown:
            self.close()
            raise BagError(f'topic(s) {unknown} not in bag {self.bag}; topics in the bag: '
                           f'{listing}')
        bad_remap = sorted(set(self.remap) - set(available))
        if bad_remap:
            self.close()
            raise BagError(f'--remap source topic(s) {bad_remap} not in bag {self.bag}; topics '
                           f'in the bag: {listing}')
        self._pubs: dict[int, tuple[object, str, str]] = {}  # conn id -> (pub, topic, type)
        by_topic: dict[str, object] = {}
        for c in conns:
            if topics and c.topic not in topics:
                continue
            try:
                cls = message_class(c.msgtype)
            except BagError:
                if topics:  # explicitly requested: the user must know
                    self.close()
                    raise
                self.stats.skipped_topics.append(f'{c.topic} [{c.msgtype}]')
                continue
            out_topic = self.remap.get(c.topic, c.topic)
            if out_topic not in by_topic:
                durable = _is_transient_local(c.topic, c)
                qos = QoSProfile(
                    history=HistoryPolicy.KEEP_LAST, depth=int(qos_depth),
                    reliability=ReliabilityPolicy.RELIABLE,
                    durability=(DurabilityPolicy.TRANSIENT_LOCAL if durable
                                else DurabilityPolicy.VOLATILE))
                by_topic[out_topic] = node.create_publisher(cls, out_topic, qos)
            self._pubs[c.id] = (by_topic[out_topic], out_topic, c.msgtype)
        if not self._pubs:
            self.close()
            raise BagError(f'nothing to play in {self.bag}: no topic with an installed message '
                           f'type was selected; topics in the bag: {listing}')
        if self.stats.skipped_topics:
            warnings.warn('not replayed (message type not installed): '
                          + ', '.join(self.stats.skipped_topics), stacklevel=2)
        self._clock_pub = None
        if clock:
            from rclpy.qos import QoSProfile as Q
            from rosgraph_msgs.msg import Clock

            self._clock_cls = Clock
            self._clock_pub = node.create_publisher(Clock, '/clock', Q(depth=10))
        self._conns = [c for c in conns if c.id in self._pubs]

    @property
    def publishers(self) -> list:
        """The distinct publishers created for the bag's topics."""
        return list({id(p): p for p, _, _ in self._pubs.values()}.values())

    def wait_for_subscribers(self, timeout: float, grace: float = 1.0,
                             every_topic: bool = False) -> bool:
        """Block until a (or every, with ``every_topic``) publisher has a matched subscriber.

        Then sleep ``grace`` seconds so the other subscribers' discovery completes. Returns
        whether the condition was met before ``timeout``.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        pubs = self.publishers
        ok = False
        while True:
            counts = [p.get_subscription_count() for p in pubs]
            ok = all(counts) if every_topic else any(counts)
            if ok or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        self.stats.subscribers_matched = ok
        if grace > 0:
            time.sleep(grace)
        return ok

    def _publish_clock(self, bag_ns: int) -> None:
        if self._clock_pub is None:
            return
        from builtin_interfaces.msg import Time

        msg = self._clock_cls(clock=fill_stamp(Time(), bag_ns))
        self._clock_pub.publish(msg)

    def _sleep_until(self, target: float, bag_ns0: int, wall0: float) -> None:
        while True:
            now = time.monotonic()
            if now >= target:
                return
            if self._clock_pub is not None and self.rate > 0:
                self._publish_clock(bag_ns0 + int((now - wall0) * self.rate * 1e9))
                time.sleep(min(CLOCK_PERIOD, target - now))
            else:
                time.sleep(target - now)

    def play_once(self, should_stop: Callable[[], bool] | None = None) -> None:
        """Publish every selected message once, paced by the record timestamps."""
        wall0 = None
        t0 = None
        last_ns = None
        for conn, t_ns, raw in iter_messages(self._reader, self._conns, self.bag):
            if should_stop is not None and should_stop():
                break
            if wall0 is None:
                wall0, t0 = time.monotonic(), t_ns
            if self.rate > 0:
                self._sleep_until(wall0 + (t_ns - t0) / 1e9 / self.rate, t0, wall0)
            self._publish_clock(t_ns)
            pub, topic, msgtype = self._pubs[conn.id]
            data = bytes(raw)
            pub.publish(data)
            if self.on_publish is not None:
                self.on_publish(topic, msgtype, data, time.monotonic())
            self.stats.published[topic] = self.stats.published.get(topic, 0) + 1
            last_ns = t_ns
        if t0 is not None and last_ns is not None:
            self.stats.bag_duration_s = (last_ns - t0) / 1e9
        self.stats.loops += 1

    def play(self, loop: bool = False, wait: float = 10.0, grace: float = 1.0,
             ack_timeout: float = 10.0, should_stop: Callable[[], bool] | None = None,
             every_topic: bool = False) -> PlayStats:
        """Wait for subscribers, play (repeatedly with ``loop``), wait for acknowledgements."""
        if wait > 0:
            if not self.wait_for_subscribers(wait, grace, every_topic):
                warnings.warn(f'no subscriber matched within {wait} s; playing anyway',
                              stacklevel=2)
        elif grace > 0:
            time.sleep(grace)
        start = time.monotonic()
        while True:
            self.play_once(should_stop)
            if not loop or (should_stop is not None and should_stop()):
                break
        self.stats.all_acked = self.wait_for_acks(ack_timeout)
        self.stats.duration_s = time.monotonic() - start
        return self.stats

    def wait_for_acks(self, timeout: float) -> bool:
        """``wait_for_all_acked`` on every reliable publisher; False if one timed out."""
        from rclpy.duration import Duration

        ok = True
        deadline = time.monotonic() + timeout
        for pub in self.publishers:
            left = max(deadline - time.monotonic(), 0.0)
            try:
                ok &= bool(pub.wait_for_all_acked(Duration(nanoseconds=int(left * 1e9))))
            except Exception:  # noqa: BLE001 - best-effort publishers raise; nothing to wait
                continue
        return ok

    def close(self) -> None:
        """Close the bag reader (publishers belong to the node)."""
        reader, self._reader = getattr(self, '_reader', None), None
        if reader is not None:
            reader.close()


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``posenet-ros replay``."""
    ap = argparse.ArgumentParser(
        prog='posenet-ros replay',
        description='Publish a rosbag2 onto live ROS 2 topics (raw CDR, recorded timing).')
    ap.add_argument('bag', type=Path, help='rosbag2 folder or .db3/.mcap file')
    ap.add_argument('--rate', type=float, default=1.0,
                    help='speed factor (default 1.0; 0 = as fast as possible)')
    ap.add_argument('--loop', action='store_true', help='play again and again (Ctrl-C stops)')
    ap.add_argument('--remap', action='append', default=[], metavar='OLD:NEW',
                    help='publish bag topic OLD as NEW (repeatable)')
    ap.add_argument('--topics', nargs='+', metavar='TOPIC',
                    help='play only these bag topics (default: all with installed types)')
    ap.add_argument('--clock', action='store_true',
                    help='publish /clock with the bag time (for use_sim_time:=true)')
    ap.add_argument('--wait', type=float, default=10.0,
                    help='seconds to wait for a subscriber before playing (default 10; 0 = '
                         'do not wait)')
    ap.add_argument('--grace', type=float, default=1.0,
                    help='seconds to wait after the first match (default 1.0)')
    ap.add_argument('--qos-depth', type=int, default=100, help='publisher history depth')
    ap.add_argument('--list', action='store_true', help="list the bag's topics and exit")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``posenet-ros replay``."""
    import rclpy

    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = []
    if '--ros-args' in argv:  # leave ROS arguments (e.g. -r __ns:=/x) to rclpy
        i = argv.index('--ros-args')
        argv, ros_args = argv[:i], argv[i:]
    args = build_parser().parse_args(argv)
    if args.list:
        for topic, (msgtype, count) in sorted(topic_counts(args.bag).items()):
            print(f'{topic}  [{msgtype}]  {count} messages')
        return 0
    rclpy.init(args=['posenet_replay', *ros_args])
    node = rclpy.create_node('posenet_replay')
    player = None
    try:
        player = BagPlayer(node, args.bag, topics=args.topics, remap=parse_remaps(args.remap),
                           rate=args.rate, clock=args.clock, qos_depth=args.qos_depth)
        stats = player.play(loop=args.loop, wait=args.wait, grace=args.grace)
        total = sum(stats.published.values())
        node.get_logger().info(
            f'published {total} messages on {len(stats.published)} topics in '
            f'{stats.duration_s:.2f} s ({stats.loops} loop(s)); all acknowledged: '
            f'{stats.all_acked}')
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        if player is not None:
            player.close()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
