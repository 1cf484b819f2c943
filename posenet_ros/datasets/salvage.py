"""``posenet-ros bag-salvage IN OUT``: copy every still-readable message of a damaged rosbag2.

Reads the storage files themselves, never trusting ``metadata.yaml`` (which may be missing or
stale), and writes a fresh, complete bag (new ``metadata.yaml``) to OUT:

- ``.db3``: every message row is read by id, so a corrupt page loses only the rows stored on it
  (and, for large messages, on its overflow chain); the messages before and after are kept.
- ``.mcap``: records are scanned from the start; a file cut short (recorder killed: no summary
  or footer) keeps every complete record before the cut. A chunk whose checksum fails is skipped.
- Each kept message is checked by deserialising it when its type is known (bag definitions or
  ROS 2 Humble's); one that does not decode counts as lost.

The report says how many messages were kept and lost, per topic where it is known (the lost
count of an ``.mcap`` cut short is known only from a ``metadata.yaml`` next to it).
"""

from __future__ import annotations

import argparse
import sqlite3
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from posenet_ros.core.errors import BagError
from posenet_ros.datasets.bagio import STORAGE_SUFFIXES, storage_files

__all__ = ['SalvageReport', 'salvage_bag', 'main']

_MCAP_MAGIC = b'\x89MCAP0\r\n'


@dataclass
class SalvageReport:
    """What :func:`salvage_bag` kept and lost."""

    source: str
    out: str
    kept: int = 0
    lost: int | None = 0  # None: unknown (an .mcap cut short without metadata.yaml)
    kept_per_topic: dict = field(default_factory=dict)
    expected_per_topic: dict = field(default_factory=dict)  # from metadata.yaml, if readable
    notes: list = field(default_factory=list)

    def summary(self) -> str:
        """One paragraph for the terminal."""
        lost = 'an unknown number' if self.lost is None else str(self.lost)
        lines = [f'{self.out}: kept {self.kept} message(s) of {self.source}; lost {lost}']
        for topic in sorted(set(self.kept_per_topic) | set(self.expected_per_topic)):
            exp = self.expected_per_topic.get(topic)
            lines.append(f'  {topic}: {self.kept_per_topic.get(topic, 0)} kept'
                         + (f' of {exp}' if exp is not None else ''))
        return '\n'.join(lines + [f'note: {n}' for n in self.notes])


@dataclass
class _Conn:
    topic: str
    msgtype: str
    msgdef: str = ''
    rihs01: str = ''
    serialization_format: str = 'cdr'


# --- readers of damaged storage ---------------------------------------------------------------
def _read_db3(path: Path, report: SalvageReport) -> Iterator[tuple[_Conn, int, bytes]]:
    try:
        con = sqlite3.connect(f'file:{path}?mode=ro&immutable=1', uri=True)
        topics = {tid: _Conn(name, typ, serialization_format=fmt or 'cdr') for tid, name, typ, fmt
                  in con.execute('SELECT id, name, type, serialization_format FROM topics')}
    except sqlite3.Error as exc:
        raise BagError(f'{path}: its topics table is unreadable ({exc}); nothing can be '
                       'salvaged from this file') from None
    try:
        for typ, enc, text, digest in con.execute(
                'SELECT topic_type, encoding, encoded_message_definition, type_description_hash '
                'FROM message_definitions'):
            for c in topics.values():
                if c.msgtype == typ and enc == 'ros2msg' and text:
                    c.msgdef, c.rihs01 = text, digest or ''
    except sqlite3.Error:
        pass  # bags before Jazzy have no definitions table
    try:
        (max_id,) = con.execute('SELECT max(id) FROM messages').fetchone()
    except sqlite3.Error as exc:
        raise BagError(f'{path}: the messages table is unreadable ({exc}); nothing can be '
                       'salvaged from this file') from None
    lost = 0
    for i in range(1, int(max_id or 0) + 1):
        try:  # one lookup per id: a corrupt page costs only the rows it holds
            row = con.execute('SELECT topic_id, timestamp, data FROM messages WHERE id = ?',
                              (i,)).fetchone()
        except sqlite3.Error:
            row = None
        if row is None or row[0] not in topics:
            lost += 1
            continue
        yield topics[row[0]], int(row[1]), bytes(row[2])
    con.close()
    if lost:
        report.notes.append(f'{path.name}: {lost} message row(s) unreadable')
    report.lost = (report.lost or 0) + lost


def _mcap_records(buf: memoryview, pos: int, end: int):
    """``(op, body, next_pos)`` records from ``pos``; stops (body None) at a cut-short record."""
    while pos + 9 <= end:
        op = buf[pos]
        (length,) = struct.unpack_from('<Q', buf, pos + 1)
        if pos + 9 + length > end:
            yield op, None, pos
            return
        yield op, buf[pos + 9:pos + 9 + length], pos + 9 + length
        pos += 9 + length
    if pos < end:
        yield -1, None, pos


def _string(body, off: int) -> tuple[str, int]:
    (n,) = struct.unpack_from('<I', body, off)
    return bytes(body[off + 4:off + 4 + n]).decode('utf-8'), off + 4 + n


def _read_mcap(path: Path, report: SalvageReport) -> Iterator[tuple[_Conn, int, bytes]]:
    from rosbags.rosbag2.storage_mcap import decompress

    data = memoryview(path.read_bytes())
    if bytes(data[:8]) != _MCAP_MAGIC:
        raise BagError(f'{path} does not start like an MCAP file; nothing can be salvaged')
    schemas: dict[int, tuple[str, str]] = {}
    channels: dict[int, _Conn] = {}

    def records(buf, pos, end, top):
        for op, body, nxt in _mcap_records(buf, pos, end):
            if body is None:
                if top:
                    report.notes.append(f'{path.name} is cut short at byte {nxt} of {end} (no '
                                        'summary/footer: the recorder did not finish); the '
                                        'records before the cut are kept')
                    report.lost = None  # unknown unless metadata.yaml says (see salvage_bag)
                return
            if op == 0x02:  # footer: the data section is over
                return
            if op == 0x03:  # schema: id, name, encoding, data
                (sid,) = struct.unpack_from('<H', body, 0)
                name, off = _string(body, 2)
                enc, off = _string(body, off)
                (n,) = struct.unpack_from('<I', body, off)
                text = bytes(body[off + 4:off + 4 + n]).decode('utf-8', 'replace')
                schemas[sid] = (name, text if enc == 'ros2msg' else '')
            elif op == 0x04:  # channel: id, schema id, topic, message encoding, metadata
                cid, sid = struct.unpack_from('<HH', body, 0)
                topic, off = _string(body, 4)
                enc, off = _string(body, off)
                name, text = schemas.get(sid, ('', ''))
                channels[cid] = _Conn(topic, name, text, '', enc or 'cdr')
            elif op == 0x05:  # message: channel, sequence, log time, publish time, data
                cid, _, log_time, _ = struct.unpack_from('<HIQQ', body, 0)
                if cid in channels:
                    yield channels[cid], int(log_time), bytes(body[22:])
            elif op == 0x06 and top:  # chunk: times, size, crc, compression, records
                _, _, size, crc = struct.unpack_from('<QQQI', body, 0)
                compression, off = _string(body, 28)
                (n,) = struct.unpack_from('<Q', body, off)
                try:
                    inner = decompress(bytes(body[off + 8:off + 8 + n]), compression, size, crc)
                except Exception as exc:  # noqa: BLE001 - checksum/size/codec errors
                    report.notes.append(f'{path.name}: a chunk at byte {nxt - len(body) - 9} is '
                                        f'damaged ({exc}) and was skipped')
                    report.lost = None
                    continue
                yield from records(memoryview(inner), 0, len(inner), False)

    yield from records(data, 8, len(data), True)


def _expected_counts(src: Path) -> dict[str, int]:
    import yaml

    meta = (src if src.is_dir() else src.parent) / 'metadata.yaml'
    try:
        info = yaml.safe_load(meta.read_text(encoding='utf-8'))['rosbag2_bagfile_information']
        return {t['topic_metadata']['name']: int(t['message_count'])
                for t in info['topics_with_message_count']}
    except Exception:  # noqa: BLE001 - missing or unreadable: counts are unknown
        return {}


def salvage_bag(src, out, storage: str | None = None) -> SalvageReport:
    """Copy every readable message of the bag ``src`` into a new bag ``out``; see module doc."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    src, out = Path(src), Path(out)
    if not src.exists():
        raise BagError(f'bag {src} does not exist')
    if out.exists():
        raise BagError(f'{out} exists; choose another output folder')
    files = storage_files(src)
    if not files:
        raise BagError(f'{src} holds no {" or ".join(STORAGE_SUFFIXES)} file to salvage')
    storage = storage or ('mcap' if files[0].suffix == '.mcap' else 'sqlite3')
    plugins = {'sqlite3': StoragePlugin.SQLITE3, 'mcap': StoragePlugin.MCAP}
    if storage not in plugins:
        raise BagError(f"storage must be 'sqlite3' or 'mcap', got {storage!r}")
    report = SalvageReport(source=str(src), out=str(out),
                           expected_per_topic=_expected_counts(src))
    humble = get_typestore(Stores.ROS2_HUMBLE)
    stores: dict[str, object] = {}  # msgtype -> typestore that decodes it (None: unknown)
    writer = Writer(out, version=9, storage_plugin=plugins[storage])
    writer.open()
    conns: dict[tuple[str, str], object] = {}
    undecodable = 0
    try:
        for f in files:
            reader = _read_mcap if f.suffix == '.mcap' else _read_db3
            for c, stamp, raw in reader(f, report):
                if c.msgtype not in stores:
                    ts = humble
                    if c.msgdef:
                        ts = get_typestore(Stores.EMPTY)
                        try:
                            ts.register(get_types_from_msg(c.msgdef, c.msgtype))
                        except Exception:  # noqa: BLE001 - odd definitions: fall back
                            ts = humble
                    stores[c.msgtype] = ts if c.msgtype in ts.types else None
                ts = stores[c.msgtype]
                if ts is not None:
                    try:
                        ts.deserialize_cdr(raw, c.msgtype)
                    except Exception:  # noqa: BLE001 - garbage bytes raise anything
                        undecodable += 1
                        continue
                key = (c.topic, c.msgtype)
                if key not in conns:
                    if c.msgdef and c.rihs01:
                        conns[key] = writer.add_connection(
                            c.topic, c.msgtype, msgdef=c.msgdef, rihs01=c.rihs01,
                            serialization_format=c.serialization_format)
                    elif ts is not None:
                        conns[key] = writer.add_connection(
                            c.topic, c.msgtype, typestore=ts,
                            serialization_format=c.serialization_format)
                    else:
                        report.notes.append(f'{c.topic} [{c.msgtype}] dropped: no message '
                                            'definition in the bag and not a ROS 2 Humble type')
                        conns[key] = None
                if conns[key] is None:
                    continue
                writer.write(conns[key], stamp, raw)
                report.kept += 1
                report.kept_per_topic[c.topic] = report.kept_per_topic.get(c.topic, 0) + 1
    except BaseException:
        writer.close()
        raise
    writer.close()
    if undecodable:
        report.notes.append(f'{undecodable} message(s) read but not decodable (damaged payload)')
        report.lost = None if report.lost is None else report.lost + undecodable
    if report.expected_per_topic:  # metadata.yaml gives the true loss, even for a cut .mcap
        expected = sum(report.expected_per_topic.values())
        if expected >= report.kept:
            report.lost = expected - report.kept
    return report


def main(argv: list[str] | None = None) -> int:
    """``posenet-ros bag-salvage IN OUT``."""
    ap = argparse.ArgumentParser(prog='posenet-ros bag-salvage',
                                 description=__doc__.split('\n')[0])
    ap.add_argument('bag', type=Path, help='damaged rosbag2 folder (or .db3/.mcap file)')
    ap.add_argument('out', type=Path, help='new bag folder to write (must not exist)')
    ap.add_argument('--storage', choices=('sqlite3', 'mcap'), default=None,
                    help='storage of the new bag (default: that of the damaged one)')
    args = ap.parse_args(argv)
    report = salvage_bag(args.bag, args.out, args.storage)
    print(report.summary())
    return 0
