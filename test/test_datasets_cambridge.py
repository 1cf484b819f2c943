"""Cambridge Landmarks reader: convention (geometric), format errors, warnings, splits."""

import numpy as np
import pytest
from helpers_data import TEST_K, make_cambridge, point_in_front, project, random_pose

from posenet_ros.core.errors import DatasetError, EmptySplitError, LabelFormatError
from posenet_ros.datasets import load_dataset, load_image, read_cambridge


def test_cambridge_pose_projects_known_point(tmp_path):
    rng = np.random.default_rng(3)
    train = [random_pose(rng) for _ in range(3)]
    test = [random_pose(rng) for _ in range(2)]
    root = make_cambridge(tmp_path / 'kings', train, test)
    samples = read_cambridge(root, 'train')
    assert [s.name for s in samples] == [f'seq1/frame{i:05d}.png' for i in range(3)]
    for T_true, s in zip(train, samples):
        X = point_in_front(T_true, (0.3, -0.2, 4.0))
        # Expected pixel straight from the camera-frame coordinates of X.
        expected = TEST_K[:2, :2] @ np.array([0.3 / 4.0, -0.2 / 4.0]) + TEST_K[:2, 2]
        assert np.allclose(project(TEST_K, s.matrix, X), expected, atol=1e-5)
        assert np.allclose(s.position, T_true[:3, 3])
        assert s.quaternion[0] >= 0 and abs(np.linalg.norm(s.quaternion) - 1) < 1e-12
        assert s.intrinsics is None and s.split == 'train'
    assert load_image(samples[0]).shape == (48, 64, 3)
    assert len(read_cambridge(root, 'test')) == 2
    assert len(read_cambridge(root, 'all')) == 5
    assert len(load_dataset(root, 'test')) == 2


def test_cambridge_geometric_check_is_sensitive_to_the_convention(tmp_path):
    # Guard against a vacuous test: reading the label without conjugation (the classic bug)
    # must move the known point away from its expected pixel (or behind the camera).
    rng = np.random.default_rng(5)
    T = random_pose(rng)
    s = read_cambridge(make_cambridge(tmp_path / 's', [T], [T]), 'train')[0]
    wrong = s.matrix.copy()
    wrong[:3, :3] = wrong[:3, :3].T
    X = point_in_front(T)
    expected = project(TEST_K, s.matrix, X)
    pc = np.linalg.inv(wrong) @ np.append(X, 1.0)
    assert pc[2] <= 0 or np.linalg.norm((TEST_K @ (pc[:3] / pc[2]))[:2] - expected) > 5.0


@pytest.mark.parametrize('bad, reason', [
    ('seq1/x.png 1 2 3 1 0 0', '8 fields'),
    ('seq1/x.png 1 2 three 1 0 0 0', 'non-numeric'),
    ('seq1/x.png 1 2 3 0 0 0 0', 'zero'),
    ('seq1/x.png 1 nan 3 1 0 0 0', 'NaN'),
])
def test_cambridge_malformed_line_names_file_and_line(tmp_path, bad, reason):
    root = make_cambridge(tmp_path / 's', [np.eye(4)], [np.eye(4)], extra_lines=[bad])
    with pytest.raises(LabelFormatError, match=reason) as info:
        read_cambridge(root, 'train')
    assert info.value.line_no == 5  # 3 header lines, 1 good line, then the bad one
    assert str(info.value).startswith(str(root / 'dataset_train.txt') + ':5:')


def test_cambridge_non_unit_quaternion_is_normalised_with_warning(tmp_path):
    root = make_cambridge(tmp_path / 's', [np.eye(4)], [np.eye(4)],
                          extra_lines=['seq1/frame00000.png 1 2 3 2 0 0 0'])
    with pytest.warns(UserWarning, match=r'dataset_train.txt:5: quaternion norm 2\.0'):
        samples = read_cambridge(root, 'train')
    assert np.allclose(samples[1].quaternion, [1, 0, 0, 0])


def test_cambridge_missing_images_and_files(tmp_path):
    root = make_cambridge(tmp_path / 's', [np.eye(4)], [np.eye(4)], images=False)
    with pytest.raises(DatasetError, match='1 of 1 listed images are missing.*frame00000'):
        read_cambridge(root, 'train')
    samples = read_cambridge(root, 'train', check_images=False)
    with pytest.raises(DatasetError, match='does not exist'):
        load_image(samples[0])
    (root / 'dataset_test.txt').unlink()
    with pytest.raises(DatasetError, match='dataset_test.txt does not exist'):
        read_cambridge(root, 'test')


def test_cambridge_empty_split(tmp_path):
    root = make_cambridge(tmp_path / 's', [np.eye(4)], [])
    with pytest.raises(EmptySplitError, match="split 'test' has no samples"):
        read_cambridge(root, 'test')
    with pytest.raises(DatasetError, match='unknown split'):
        read_cambridge(root, 'val')
