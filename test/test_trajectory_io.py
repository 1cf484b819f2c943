"""TUM trajectory export reloads to the same poses, in the order and convention evo expects."""

import numpy as np
import pytest

from posenet_ros.core.errors import TrajectoryFormatError
from posenet_ros.core.geometry import canonicalize_quaternion
from posenet_ros.evaluation.trajectory_io import read_tum, write_tum


def test_roundtrip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    n = 20
    stamps = 1.7e9 + np.cumsum(rng.uniform(0.01, 0.1, n))
    pos = rng.normal(size=(n, 3)) * 10
    quat = canonicalize_quaternion(rng.normal(size=(n, 4)))
    path = write_tum(tmp_path / 'traj.tum', stamps, pos, quat, comment='test run\nsecond')
    s2, p2, q2 = read_tum(path)
    np.testing.assert_array_equal(s2, stamps)
    np.testing.assert_array_equal(p2, pos)
    np.testing.assert_allclose(q2, quat, rtol=0, atol=1e-15)


def test_column_order_is_xyzw_and_failures_are_skipped(tmp_path):
    q = np.array([[0.5, 0.5, -0.5, 0.5], [np.nan, 0, 0, 0], [-1.0, 0, 0, 0]])  # wxyz
    path = write_tum(tmp_path / 't.txt', [1.0, 2.0, 3.0], [[1, 2, 3], [0, 0, 0], [4, 5, 6]], q)
    rows = [line.split() for line in path.read_text().splitlines() if not line.startswith('#')]
    assert len(rows) == 2  # the NaN frame has no estimate
    assert [float(v) for v in rows[0]] == [1.0, 1, 2, 3, 0.5, -0.5, 0.5, 0.5]
    assert [float(v) for v in rows[1]] == [3.0, 4, 5, 6, 0, 0, 0, 1.0]  # canonical w >= 0
    np.testing.assert_allclose(np.loadtxt(path)[:, 0], [1.0, 3.0])  # plain numpy (as evo) reads it


def test_malformed_file_names_the_line(tmp_path):
    path = tmp_path / 'bad.tum'
    path.write_text('# header\n1 0 0 0 0 0 0 1\n2 0 0 0 0 0 1\n')
    with pytest.raises(TrajectoryFormatError, match=r'bad.tum:3'):
        read_tum(path)
    with pytest.raises(TrajectoryFormatError, match='does not exist'):
        read_tum(tmp_path / 'missing.tum')
