"""Damaged bags: one clear error naming the file, and bag-salvage keeps what is readable.

Each test damages a real bag written with rosbags the way it happens: a page of a .db3
overwritten in the middle (disk/copy error), an .mcap cut short (recorder killed: no summary, no
footer), metadata.yaml missing (recorder killed) or stale (files or counts changed after it was
written).
"""

import numpy as np
import pytest
import yaml
from helpers_data import write_pose_bag

from posenet_ros.cli import main as cli_main
from posenet_ros.core.errors import BagError
from posenet_ros.datasets import read_bag
from posenet_ros.datasets.salvage import salvage_bag

T0 = 1000.0
N = 40


def _frame_index(sample) -> int:
    return int(round((sample.stamp - T0) / 0.1))


def _overwrite_middle_page(db3, fill=0xAB, page=4096):
    data = bytearray(db3.read_bytes())
    mid = (len(data) // page // 2) * page
    data[mid:mid + page] = bytes([fill]) * page
    db3.write_bytes(bytes(data))


@pytest.mark.slow
def test_db3_with_a_page_overwritten(tmp_path, capsys):
    from helpers_model import make_tiny_export

    frames = write_pose_bag(tmp_path / 'b', n_images=N, size=(120, 160))
    db3 = tmp_path / 'b' / 'b.db3'
    _overwrite_middle_page(db3)
    with pytest.raises(BagError) as exc:
        read_bag(tmp_path / 'b', image_topic='/cam/rgb8')
    assert str(db3) in str(exc.value) and 'corrupt' in str(exc.value)
    assert 'posenet-ros bag-salvage' in str(exc.value)
    # evaluate used to end in a raw apsw.CorruptError traceback
    model = make_tiny_export(tmp_path, crop=32)
    assert cli_main(['evaluate', '--model', str(model), '--bag', str(tmp_path / 'b'),
                     '--image-topic', '/cam/rgb8', '--out', str(tmp_path / 'ev'),
                     '--no-baselines', '--quiet']) == 1
    err = capsys.readouterr().err
    assert str(db3) in err and 'Traceback' not in err and 'bag-salvage' in err

    assert cli_main(['bag-salvage', str(tmp_path / 'b'), str(tmp_path / 's')]) == 0
    out = capsys.readouterr().out
    samples, _ = read_bag(tmp_path / 's', image_topic='/cam/rgb8')
    kept = {_frame_index(s) for s in samples}
    lost = sorted(set(range(N)) - kept)
    assert 1 <= len(lost) <= 2, lost  # one 4 KiB page holds part of at most two images
    assert f'/cam/rgb8: {N - len(lost)} kept of {N}' in out and f'lost {len(lost)}' in out
    for s in samples:  # every kept frame is intact, before and after the damage
        assert np.array_equal(s.image, frames[_frame_index(s)])
    assert kept >= set(range(lost[0]))  # the whole readable prefix


def test_mcap_cut_short_by_a_killed_recorder(tmp_path, capsys):
    # 60 frames of 320x240 rgb8 are ~14 MB: several 1 MiB chunks, the last ones cut away.
    frames = write_pose_bag(tmp_path / 'm', 'mcap', n_images=60, size=(240, 320))
    mcap = tmp_path / 'm' / 'm.mcap'
    data = mcap.read_bytes()
    mcap.write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(BagError) as exc:
        read_bag(tmp_path / 'm', image_topic='/cam/rgb8')
    assert str(mcap) in str(exc.value) and 'no summary/footer' in str(exc.value)

    report = salvage_bag(tmp_path / 'm', tmp_path / 's')
    samples, _ = read_bag(tmp_path / 's', image_topic='/cam/rgb8')
    n = len(samples)
    assert 0 < n < 60
    assert [_frame_index(s) for s in samples] == list(range(n))  # exactly a prefix
    for s in samples:
        assert np.array_equal(s.image, frames[_frame_index(s)])
    total = sum(report.expected_per_topic.values())
    assert report.kept_per_topic['/cam/rgb8'] == n and report.lost == total - report.kept > 0
    assert 'cut short' in report.summary()
    # Without metadata.yaml the loss is unknown, and the report says so.
    (tmp_path / 'm' / 'metadata.yaml').unlink()
    report = salvage_bag(tmp_path / 'm', tmp_path / 's2')
    assert report.lost is None and 'lost an unknown number' in report.summary()
    assert report.kept_per_topic['/cam/rgb8'] == n


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_missing_and_stale_metadata(tmp_path, storage):
    frames = write_pose_bag(tmp_path / 'b', storage, n_images=6)
    meta = tmp_path / 'b' / 'metadata.yaml'
    text = meta.read_text()
    # stale: a topic count that does not match the storage
    info = yaml.safe_load(text)
    info['rosbag2_bagfile_information']['topics_with_message_count'][0]['message_count'] += 5
    meta.write_text(yaml.safe_dump(info))
    with pytest.raises(BagError, match=r'metadata.yaml is stale: message counts.*listed'):
        read_bag(tmp_path / 'b', image_topic='/cam/rgb8')
    # stale: a file that is not listed
    meta.write_text(text)
    suffix = '.db3' if storage == 'sqlite3' else '.mcap'
    extra = tmp_path / 'b' / f'b_1{suffix}'
    extra.write_bytes((tmp_path / 'b' / f'b{suffix}').read_bytes())
    with pytest.raises(BagError, match=f'is stale: it does not list b_1{suffix}'):
        read_bag(tmp_path / 'b', image_topic='/cam/rgb8')
    extra.unlink()
    # missing: the error names it, and salvage rebuilds a complete bag from the storage
    meta.unlink()
    with pytest.raises(BagError, match=r'metadata.yaml is missing .*bag-salvage'):
        read_bag(tmp_path / 'b', image_topic='/cam/rgb8')
    report = salvage_bag(tmp_path / 'b', tmp_path / 's')
    assert report.lost == 0 and report.kept_per_topic['/cam/rgb8'] == 6
    samples, _ = read_bag(tmp_path / 's', image_topic='/cam/rgb8')
    assert all(np.array_equal(s.image, f) for s, f in zip(samples, frames)) and len(samples) == 6
    # and a bare storage file still reads without metadata.yaml
    assert len(read_bag(tmp_path / 'b' / f'b{suffix}', image_topic='/cam/rgb8')[0]) == 6


def test_salvage_refuses_to_overwrite_and_missing_input(tmp_path):
    write_pose_bag(tmp_path / 'b', n_images=2)
    (tmp_path / 'exists').mkdir()
    with pytest.raises(BagError, match='exists'):
        salvage_bag(tmp_path / 'b', tmp_path / 'exists')
    with pytest.raises(BagError, match='does not exist'):
        salvage_bag(tmp_path / 'nope', tmp_path / 'out')


@pytest.mark.ros
@pytest.mark.slow
def test_replay_names_the_damaged_file(tmp_path, capsys):
    """posenet-ros replay opens bags through the same checks (it used rosbags directly)."""
    write_pose_bag(tmp_path / 'b', n_images=N, size=(120, 160))
    db3 = tmp_path / 'b' / 'b.db3'
    _overwrite_middle_page(db3)
    assert cli_main(['replay', str(tmp_path / 'b'), '--rate', '0', '--wait', '0']) == 1
    err = capsys.readouterr().err
    assert str(db3) in err and 'Traceback' not in err and 'bag-salvage' in err
