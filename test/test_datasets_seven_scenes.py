"""7-Scenes reader: convention (geometric), split files, malformed pose files."""

import numpy as np
import pytest
from helpers_data import make_seven_scenes, point_in_front, project, random_pose

from posenet_ros.core.errors import DatasetError, EmptySplitError, LabelFormatError
from posenet_ros.datasets import load_dataset, load_image, read_seven_scenes
from posenet_ros.datasets.seven_scenes import SEVEN_SCENES_K


def _scene(tmp_path, n=3, **kw):
    rng = np.random.default_rng(11)
    seqs = {'seq-01': [random_pose(rng) for _ in range(n)],
            'seq-02': [random_pose(rng) for _ in range(2)]}
    return make_seven_scenes(tmp_path / 'chess', seqs, **kw), seqs


def test_seven_scenes_pose_projects_known_point(tmp_path):
    root, seqs = _scene(tmp_path)
    samples = read_seven_scenes(root, 'train')
    assert [s.name for s in samples] == ['seq-01/frame-000000', 'seq-01/frame-000001',
                                         'seq-01/frame-000002']
    for T, s in zip(seqs['seq-01'], samples):
        X = point_in_front(T, (-0.5, 0.25, 2.0))
        expected = [585 * -0.25 + 320, 585 * 0.125 + 240]
        assert np.allclose(project(s.intrinsics, s.matrix, X), expected, atol=1e-4)
        assert np.allclose(s.intrinsics, SEVEN_SCENES_K)
    assert load_image(samples[0]).dtype == np.uint8
    assert [s.split for s in read_seven_scenes(root, 'all')] == ['train'] * 3 + ['test'] * 2
    assert len(load_dataset(root, 'test')) == 2


def test_seven_scenes_split_and_pose_errors(tmp_path):
    root, _ = _scene(tmp_path)
    (root / 'TestSplit.txt').write_text('sequence2\nseq two\n')
    with pytest.raises(LabelFormatError, match=r'TestSplit.txt:2: expected "sequenceN"'):
        read_seven_scenes(root, 'test')
    (root / 'TestSplit.txt').write_text('sequence7\n')
    with pytest.raises(DatasetError, match='lists seq-07 but .* does not exist'):
        read_seven_scenes(root, 'test')
    pose = root / 'seq-01' / 'frame-000001.pose.txt'
    pose.write_text('1 0 0 0\n0 1 0 0\n0 0 1\n0 0 0 1\n')
    with pytest.raises(LabelFormatError, match='4x4 matrix'):
        read_seven_scenes(root, 'train')
    pose.write_text('1 0 0 0\n0 1 0 x\n0 0 1 0\n0 0 0 1\n')
    with pytest.raises(LabelFormatError, match=r'frame-000001.pose.txt:2: non-numeric'):
        read_seven_scenes(root, 'train')


def test_seven_scenes_non_finite_pose_skipped_and_non_orthonormal_warned(tmp_path):
    root, _ = _scene(tmp_path)
    (root / 'seq-01' / 'frame-000001.pose.txt').write_text(
        '-inf -inf -inf -inf\n' * 3 + '0 0 0 1\n')
    (root / 'seq-01' / 'frame-000002.pose.txt').write_text(
        '1.2 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n')
    with pytest.warns(UserWarning) as rec:
        samples = read_seven_scenes(root, 'train')
    msgs = ' '.join(str(w.message) for w in rec)
    assert 'frame-000001.pose.txt:1: pose is not finite' in msgs
    assert 'frame-000002.pose.txt:1: rotation is not orthonormal' in msgs
    assert len(samples) == 2


def test_seven_scenes_missing_images_and_empty_split(tmp_path):
    root, _ = _scene(tmp_path, images=False)
    with pytest.raises(DatasetError, match='listed images are missing.*frame-000000.color.png'):
        read_seven_scenes(root, 'train')
    (root / 'TestSplit.txt').write_text('\n')
    with pytest.raises(EmptySplitError):
        read_seven_scenes(root, 'test', check_images=False)
