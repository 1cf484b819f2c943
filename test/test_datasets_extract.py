"""extract-bag (library + CLI) and load_dataset auto-detection."""

import json

import numpy as np
import pytest
from helpers_data import make_cambridge, make_seven_scenes, motion, write_pose_bag

from posenet_ros.cli import main as cli_main
from posenet_ros.core.errors import DatasetError
from posenet_ros.datasets import detect_kind, extract_bag, load_dataset, load_image


def test_extract_bag_cli_writes_loadable_manifest(tmp_path, capsys):
    frames = write_pose_bag(tmp_path / 'bag', 'mcap', n_images=7, tf_chain=True)
    out = tmp_path / 'ds'
    rc = cli_main(['extract-bag', str(tmp_path / 'bag'), '--out', str(out), '--image-topic',
                   '/cam/rgb8', '--tf', 'map', 'cam_optical', '--test-every', '3', '--quiet'])
    assert rc == 0
    assert '7 frames written from 7 images' in capsys.readouterr().out
    train, test = load_dataset(out, 'train'), load_dataset(out, 'test')
    assert detect_kind(out) == 'manifest' and len(train) == 5 and len(test) == 2
    s = test[0]  # third frame (index 2)
    assert np.array_equal(load_image(s), frames[2])
    assert np.allclose(s.matrix, motion(s.stamp - 1000.0), atol=1e-6)
    assert s.intrinsics is not None
    info = json.loads((out / 'dataset.json').read_text())
    assert info['frames']['camera_frame'] == 'cam_optical' and info['bag']['n_used'] == 7
    # refuses to overwrite, and errors reach the CLI as a clean message
    assert cli_main(['extract-bag', str(tmp_path / 'bag'), '--out', str(out), '--tf', 'map',
                     'cam_optical', '--image-topic', '/cam/rgb8', '--quiet']) == 1
    assert 'already holds a dataset' in capsys.readouterr().err


def test_extract_bag_time_split_and_force(tmp_path):
    write_pose_bag(tmp_path / 'bag', n_images=6)
    out = tmp_path / 'ds'
    extract_bag(tmp_path / 'bag', out, image_topic='/cam/rgb8', progress=False)
    stats = extract_bag(tmp_path / 'bag', out, image_topic='/cam/rgb8', test_after=0.35,
                        overwrite=True, progress=False, every_n=1)
    assert stats.n_used == 6
    assert [s.split for s in load_dataset(out, 'all')] == ['train'] * 4 + ['test'] * 2


def test_detect_kind_and_errors(tmp_path):
    cam = make_cambridge(tmp_path / 'cam', [np.eye(4)], [np.eye(4)])
    seven = make_seven_scenes(tmp_path / 'seven', {'seq-01': [np.eye(4)], 'seq-02': [np.eye(4)]})
    write_pose_bag(tmp_path / 'bag', n_images=2)
    assert detect_kind(cam) == 'cambridge' and detect_kind(seven) == '7scenes'
    assert detect_kind(tmp_path / 'bag') == 'bag'
    (tmp_path / 'junk').mkdir()
    with pytest.raises(DatasetError, match='cannot tell what kind'):
        load_dataset(tmp_path / 'junk', 'train')
    with pytest.raises(DatasetError, match='does not exist'):
        load_dataset(tmp_path / 'missing', 'train')
    with pytest.raises(DatasetError, match='only apply to bags'):
        load_dataset(cam, 'train', image_topic='/x')
    assert len(load_dataset(seven, 'train', kind='7scenes')) == 1
