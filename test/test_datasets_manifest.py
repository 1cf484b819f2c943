"""PoseSample/load_image and the manifest format: round trip, errors, warnings."""

import numpy as np
import pytest
from helpers_data import point_in_front, project, random_pose, write_png

from posenet_ros.core.errors import DatasetError, EmptySplitError, LabelFormatError
from posenet_ros.datasets import (
    PoseSample,
    intrinsics_matrix,
    load_dataset,
    load_image,
    read_manifest,
    write_manifest,
)
from posenet_ros.datasets.manifest import MANIFEST_FILE

HEADER = 'image,split,x,y,z,qw,qx,qy,qz'


def test_pose_sample_canonicalises_and_load_image(tmp_path):
    s = PoseSample(position=[1, 2, 3], quaternion=[-2, 0, 0, 0], image_path=tmp_path / 'a.png')
    assert np.allclose(s.quaternion, [1, 0, 0, 0]) and s.name == 'a.png'
    with pytest.raises(DatasetError, match=r'a\.png does not exist'):
        load_image(s)
    (tmp_path / 'a.png').write_bytes(b'not a png')
    with pytest.raises(DatasetError, match=r'a\.png cannot be decoded'):
        load_image(s)
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200  # red: checks the BGR->RGB conversion
    write_png(tmp_path / 'a.png', rgb)
    assert np.array_equal(load_image(s), rgb)
    mem = PoseSample(position=[0, 0, 0], quaternion=[1, 0, 0, 0], image=rgb, name='m')
    assert load_image(mem) is not None
    with pytest.raises(DatasetError, match='uint8 RGB'):
        load_image(PoseSample(position=[0, 0, 0], quaternion=[1, 0, 0, 0], image=rgb[..., 0]))


def test_manifest_round_trip_and_geometry(tmp_path):
    rng = np.random.default_rng(2)
    K = intrinsics_matrix(200, 210, 31.5, 23.5)
    samples = []
    for i in range(4):
        T = random_pose(rng)
        path = write_png(tmp_path / 'images' / f'{i}.png', seed=i)
        from posenet_ros.core.geometry import matrix_to_pose
        p, q = matrix_to_pose(T)
        samples.append(PoseSample(position=p, quaternion=q, split='train' if i < 3 else 'test',
                                  image_path=path, stamp=10.0 + i,
                                  intrinsics=K if i % 2 == 0 else None))
    write_manifest(tmp_path, samples, info={'frames': {'map_frame': 'map'}})
    back = read_manifest(tmp_path, 'all')
    assert [b.name for b in back] == ['images/0.png', 'images/1.png', 'images/2.png',
                                      'images/3.png']
    for a, b in zip(samples, back):
        assert np.allclose(a.position, b.position, atol=1e-12)
        assert np.allclose(a.quaternion, b.quaternion, atol=1e-12)
        assert a.stamp == b.stamp and a.split == b.split
        assert (b.intrinsics is None) == (a.intrinsics is None)
        X = point_in_front(a.matrix, (0.1, 0.2, 3.0))
        assert np.allclose(project(K, b.matrix, X), project(K, a.matrix, X), atol=1e-6)
    assert len(load_dataset(tmp_path, 'train')) == 3
    with pytest.raises(EmptySplitError, match="split 'val'"):
        read_manifest(tmp_path, 'val')


@pytest.mark.parametrize('body, match', [
    ('image,split,x,y,z,qw,qx,qy\n', r'poses.csv:1: header lacks column\(s\) \[.qz.\]'),
    (f'{HEADER}\na.png,train,1,2,3,1,0,0\n', r'poses.csv:2: expected 9 columns'),
    (f'{HEADER}\na.png,train,1,2,3,1,0,0,0\nb.png,train,1,x,3,1,0,0,0\n',
     r'poses.csv:3: column .y. is not a number'),
    (f'{HEADER}\na.png,train,1,2,3,0,0,0,0\n', r'poses.csv:2: quaternion is zero'),
    (f'{HEADER},fx,fy,cx,cy\na.png,train,1,2,3,1,0,0,0,100,,3,4\n', 'set all of fx'),
    (f'{HEADER}\n,train,1,2,3,1,0,0,0\n', 'empty image'),
])
def test_manifest_malformed(tmp_path, body, match):
    (tmp_path / MANIFEST_FILE).write_text(body)
    with pytest.raises(LabelFormatError, match=match):
        read_manifest(tmp_path, 'all', check_images=False)


def test_manifest_warns_and_checks_images(tmp_path):
    (tmp_path / MANIFEST_FILE).write_text(f'{HEADER}\na.png,train,1,2,3,0,0,0,1.5\n')
    with pytest.warns(UserWarning, match=r'poses.csv:2: quaternion norm 1\.5'):
        s = read_manifest(tmp_path, 'train', check_images=False)
    assert np.allclose(s[0].quaternion, [0, 0, 0, 1])
    with pytest.raises(DatasetError, match='missing, first: .*a.png'), pytest.warns(UserWarning):
        read_manifest(tmp_path, 'train')
    with pytest.raises(DatasetError, match='not inside'):
        write_manifest(tmp_path / 'other', s)
