"""COLMAP (text + binary) and VisualSFM NVM import, proven geometrically.

Each fixture is written here from a known scene: cameras with known poses (project convention)
and 3D points, stored in the file format's own convention (COLMAP world-to-camera R, t and
pixel centres at +0.5; NVM world-to-camera quaternion, camera centre, measurements relative to
the image centre). The imported labels must project every 3D point onto its recorded pixel.
"""

import json
import struct

import cv2
import numpy as np
import pytest

from posenet_ros.core.errors import AlignmentError, SfMFormatError
from posenet_ros.core.geometry import (
    invert,
    matrix_to_quat,
    pose_to_matrix,
    rotation_error_deg,
    translation_error,
)
from posenet_ros.datasets.manifest import read_manifest
from posenet_ros.sfm import importers
from posenet_ros.sfm.align import Sim3
from posenet_ros.sfm.colmap_io import read_colmap_model
from posenet_ros.sfm.nvm import read_nvm

W, H = 64, 48
FX, FY, CX, CY = 50.0, 52.0, 31.5, 23.5  # OpenCV pixel convention (pixel centres at integers)
K = np.array([[FX, 0, CX], [0, FY, CY], [0, 0, 1.0]])
K1 = np.array([[FX, 0, CX], [0, FX, CY], [0, 0, 1.0]])  # one focal length (SIMPLE_RADIAL, NVM)


def _fs(values):
    return ' '.join(repr(float(v)) for v in values)


def _look_at(centre, target):
    z = np.asarray(target, float) - centre
    z /= np.linalg.norm(z)
    x = np.cross(z, [0, 0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)  # y down (optical frame), right-handed
    return np.stack([x, y, z], axis=1)  # columns = camera axes in the map: R_map_cam


def _scene():
    """Four cameras around the origin (true map frame, metres) and 6 points in view of all."""
    centres = np.array([[4.0, 0.5, 1.0], [0.3, 4.0, 1.2], [-4.0, -0.2, 0.8], [0.2, -3.8, 1.5]])
    cams = [(c, matrix_to_quat(_look_at(c, [0, 0, 1.0]))) for c in centres]
    pts = np.array([[0.3, 0.2, 1.0], [-0.4, 0.1, 1.3], [0.1, -0.5, 0.7], [0.0, 0.0, 1.0],
                    [0.5, -0.3, 1.4], [-0.2, 0.4, 0.6]])
    return cams, pts


def _project(position, quat, X, k=K):
    T_cam_map = invert(pose_to_matrix(position, quat))
    uv = (k @ (T_cam_map[:3, :3] @ X + T_cam_map[:3, 3]))
    return uv[:2] / uv[2]


def _sfm_frame():
    """SfM's arbitrary frame: x_sfm = SIM.apply(x_true) (scale 0.3, rotated, shifted)."""
    q = np.array([0.9, 0.2, -0.3, 0.25])
    return Sim3(0.3, pose_to_matrix(np.zeros(3), q / np.linalg.norm(q))[:3, :3], [5, -1, 2])


def _in_sfm(sim, cams, pts):
    cams = [sim.apply_pose(p, q) for p, q in cams]
    return cams, sim.apply(pts)


def _colmap_rt(position, quat):
    """COLMAP's (qvec wxyz, tvec) = world-to-camera of a camera-to-map pose."""
    R_cw = pose_to_matrix(position, quat)[:3, :3].T
    return matrix_to_quat(R_cw), -R_cw @ position


def _write_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        cv2.imwrite(str(folder / n), np.full((H, W, 3), 128, np.uint8))


def _write_colmap_text(folder, cams, pts, model='PINHOLE'):
    folder.mkdir(parents=True)
    params = (f'{FX} {FY} {CX + 0.5} {CY + 0.5}' if model == 'PINHOLE'
              else f'{FX} {CX + 0.5} {CY + 0.5} 0.01')
    (folder / 'cameras.txt').write_text(f'# Camera list\n1 {model} {W} {H} {params}\n')
    lines, tracks = ['# Image list'], {j: [] for j in range(len(pts))}
    for i, (p, q) in enumerate(cams):
        qv, tv = _colmap_rt(p, q)
        lines.append(f'{i + 1} {_fs(qv)} {_fs(tv)} 1 '
                     f'img_{i}.png')
        obs = []
        for j, X in enumerate(pts):
            uv = _project(p, q, X) + 0.5  # COLMAP pixel convention
            obs.append(f'{_fs(uv)} {j + 1}')
            tracks[j].append(f'{i + 1} {j}')
        lines.append(' '.join(obs))
    (folder / 'images.txt').write_text('\n'.join(lines) + '\n')
    (folder / 'points3D.txt').write_text(''.join(
        f'{j + 1} {_fs(X)} 128 128 128 0.1 {" ".join(tracks[j])}\n'
        for j, X in enumerate(pts)))


def _write_colmap_binary(folder, cams, pts, k=K1):
    folder.mkdir(parents=True)
    with open(folder / 'cameras.bin', 'wb') as fh:  # SIMPLE_RADIAL = model id 2: f, cx, cy, k
        fh.write(struct.pack('<Q', 1))
        fh.write(struct.pack('<iiQQ', 1, 2, W, H))
        fh.write(struct.pack('<4d', FX, CX + 0.5, CY + 0.5, 0.0))
    with open(folder / 'images.bin', 'wb') as fh:
        fh.write(struct.pack('<Q', len(cams)))
        for i, (p, q) in enumerate(cams):
            qv, tv = _colmap_rt(p, q)
            fh.write(struct.pack('<I4d3dI', i + 1, *qv, *tv, 1))
            fh.write(f'img_{i}.png'.encode() + b'\0')
            fh.write(struct.pack('<Q', len(pts)))
            for j, X in enumerate(pts):
                u, v = _project(p, q, X, k) + 0.5
                fh.write(struct.pack('<ddq', u, v, j + 1))
    with open(folder / 'points3D.bin', 'wb') as fh:
        fh.write(struct.pack('<Q', len(pts)))
        for j, X in enumerate(pts):
            fh.write(struct.pack('<Q3d3BdQ', j + 1, *X, 1, 2, 3, 0.1, len(cams)))
            for i in range(len(cams)):
                fh.write(struct.pack('<II', i + 1, j))


def _check_reprojection(samples, cams_true, pts_true, k=K, tol=1e-6):
    """Each label + its K projects every true 3D point onto the pixel the camera saw."""
    assert len(samples) == len(cams_true)
    for s in sorted(samples, key=lambda s: s.name):
        i = int(s.name.split('_')[-1].split('.')[0])
        p, q = cams_true[i]
        np.testing.assert_allclose(s.intrinsics, k)
        for X in pts_true:
            T_cam_map = invert(s.matrix)
            uv = s.intrinsics @ (T_cam_map[:3, :3] @ X + T_cam_map[:3, 3])
            np.testing.assert_allclose(uv[:2] / uv[2], _project(p, q, X, k), atol=tol)
        assert translation_error(s.position, p) < 1e-9
        assert rotation_error_deg(s.quaternion, q) < 1e-5


def test_colmap_text_import_is_geometrically_exact(tmp_path):
    cams, pts = _scene()
    _write_colmap_text(tmp_path / 'sparse' / '0', cams, pts)
    _write_images(tmp_path / 'imgs', [f'img_{i}.png' for i in range(4)])
    importers.import_sfm(tmp_path / 'sparse', tmp_path / 'imgs', tmp_path / 'ds', test_every=2)
    samples = read_manifest(tmp_path / 'ds', 'all')
    _check_reprojection(samples, cams, pts)
    assert sorted(s.split for s in samples) == ['test', 'test', 'train', 'train']
    info = json.loads((tmp_path / 'ds' / 'dataset.json').read_text())
    assert info['units'] == 'sfm_units' and info['sfm']['kind'] == 'colmap-text'
    assert info['sfm']['n_points3D'] == 6
    assert (tmp_path / 'ds' / 'images' / 'img_3.png').is_file()


def test_colmap_binary_import_is_geometrically_exact(tmp_path):
    cams, pts = _scene()
    _write_colmap_binary(tmp_path / 'model', cams, pts)
    model = read_colmap_model(tmp_path / 'model')
    assert model.kind == 'colmap-binary' and len(model.points) == 6
    assert model.cameras[1].model == 'SIMPLE_RADIAL' and not model.cameras[1].has_distortion
    _write_images(tmp_path / 'imgs', [f'img_{i}.png' for i in range(4)])
    importers.import_sfm(tmp_path / 'model', tmp_path / 'imgs', tmp_path / 'ds', test_every=0)
    _check_reprojection(read_manifest(tmp_path / 'ds', 'all'), cams, pts, K1)


def test_nvm_import_is_geometrically_exact(tmp_path):
    cams, pts = _scene()
    lines = ['NVM_V3', '', str(len(cams))]
    for i, (p, q) in enumerate(cams):
        q_cw = matrix_to_quat(pose_to_matrix(p, q)[:3, :3].T)  # NVM: world-to-camera, WXYZ
        lines.append(f'img_{i}.png {FX!r} {_fs(q_cw)} '
                     f'{_fs(p)} 0 0')  # then the camera CENTRE
    lines += ['', str(len(pts))]
    for X in pts:
        meas = []
        for i, (p, q) in enumerate(cams):
            uv = _project(p, q, X, K1) - [CX, CY]  # relative to the image centre
            meas.append(f'{i} 0 {_fs(uv)}')
        lines.append(f'{_fs(X)} 128 128 128 {len(cams)} {" ".join(meas)}')
    lines += ['', '0', '']
    (tmp_path / 'model.nvm').write_text('\n'.join(lines))
    _write_images(tmp_path / 'imgs', [f'img_{i}.png' for i in range(4)])
    model = read_nvm(tmp_path / 'model.nvm', tmp_path / 'imgs')
    assert len(model.points) == 6
    importers.import_sfm(tmp_path / 'model.nvm', tmp_path / 'imgs', tmp_path / 'ds',
                         test_every=0)
    _check_reprojection(read_manifest(tmp_path / 'ds', 'all'), cams, pts, K1)


def test_align_csv_maps_sfm_frame_to_metres(tmp_path, capsys):
    cams, pts = _scene()
    sim = _sfm_frame()
    cams_sfm, pts_sfm = _in_sfm(sim, cams, pts)
    _write_colmap_text(tmp_path / 'model', cams_sfm, pts_sfm)
    _write_images(tmp_path / 'imgs', [f'img_{i}.png' for i in range(4)])
    ref = tmp_path / 'survey.csv'
    ref.write_text('image,x,y,z\n' + ''.join(
        f'img_{i}.png,{p[0]},{p[1]},{p[2]}\n' for i, (p, _) in enumerate(cams)))
    rc = importers.main([str(tmp_path / 'model'), '--images', str(tmp_path / 'imgs'),
                         '--out', str(tmp_path / 'ds'), '--align', str(ref), '--test-every', '0'])
    assert rc == 0 and 'dataset:' in capsys.readouterr().out
    _check_reprojection(read_manifest(tmp_path / 'ds', 'all'), cams, pts, tol=1e-5)
    info = json.loads((tmp_path / 'ds' / 'dataset.json').read_text())
    assert info['units'] == 'metres'
    assert info['alignment']['sim3']['scale'] == pytest.approx(1 / 0.3)
    assert info['alignment']['residual_m']['max'] < 1e-9


def test_known_distance_scales_to_metres(tmp_path):
    cams, pts = _scene()
    _write_colmap_text(tmp_path / 'model', *_in_sfm(Sim3(0.25), cams, pts))
    _write_images(tmp_path / 'imgs', [f'img_{i}.png' for i in range(4)])
    metres = float(np.linalg.norm(cams[0][0] - cams[2][0]))
    importers.main([str(tmp_path / 'model'), '--images', str(tmp_path / 'imgs'), '--out',
                    str(tmp_path / 'ds'), '--known-distance', 'img_0.png', 'img_2.png',
                    str(metres)])
    _check_reprojection(read_manifest(tmp_path / 'ds', 'all'), cams, pts, tol=1e-5)
    with pytest.raises(AlignmentError, match='not among'):
        importers.import_sfm(tmp_path / 'model', tmp_path / 'imgs', tmp_path / 'ds2',
                             known_distance=('nope.png', 'img_0.png', 1.0))


def test_largest_sub_model_is_used_and_bad_inputs_are_explained(tmp_path, caplog):
    cams, pts = _scene()
    _write_colmap_text(tmp_path / 'sparse' / '0', cams[:1], pts)
    _write_colmap_text(tmp_path / 'sparse' / '1', cams, pts)
    model = importers.load_reconstruction(tmp_path)
    assert len(model.images) == 4 and model.source.endswith('1')
    assert 'holds 2 models' in caplog.text
    (tmp_path / 'sparse' / '1' / 'points3D.txt').unlink()
    with pytest.raises(SfMFormatError, match='lacks points3D.txt'):
        read_colmap_model(tmp_path / 'sparse' / '1')
    with pytest.raises(SfMFormatError, match='no COLMAP model'):
        importers.load_reconstruction(tmp_path / 'imgs_missing')
    bad = tmp_path / 'x.nvm'
    bad.write_text('NVM_V3\n\n2\nimg_0.png 50 1 0 0 0 0 0 0 0 0\n')
    with pytest.raises(SfMFormatError, match='ends after 1'):
        read_nvm(bad)
    bad.write_text('NVM_V3\n\n1\nimg_0.png 50 1 0 zero 0 0 0 0 0 0\n')
    with pytest.raises(SfMFormatError, match=r'x.nvm:4'):
        read_nvm(bad)
    _write_images(tmp_path / 'other', ['unrelated.png'])
    with pytest.raises(SfMFormatError, match='none of the 1 registered'):
        importers.import_sfm(tmp_path / 'sparse' / '0', tmp_path / 'other', tmp_path / 'ds')
