"""Geometric verification: a real map from rendered frames, real exports, real bad files.

The synthetic courtyard is rendered at 320x240 from known poses (training laps for the map,
test laps between them for the queries); errors are measured against the renderer's poses.
Bounds were set at about 1.5x the worst value over scene seeds 0-4 (see docs/verification.md).
"""

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import transforms3d.quaternions as tq
from helpers_learning import SEED, check_below, sabotage_labels
from helpers_model import make_tiny_export
from helpers_slow import slow_fixture

from posenet_ros.cli import main as cli_main
from posenet_ros.core.errors import (
    CorruptMapError,
    EmptySplitError,
    IncompatibleMapError,
    MapBuildError,
    MapMismatchError,
    MapNotFoundError,
    MissingIntrinsicsError,
)
from posenet_ros.core.geometry import invert, rotation_error_deg, translation_error
from posenet_ros.datasets import PoseSample, load_dataset, load_image, write_manifest
from posenet_ros.localizer import Localizer
from posenet_ros.model.export import read_metadata
from posenet_ros.model.relocalizer import Relocalizer
from posenet_ros.tools.synthetic import (
    ROOM,
    WALL_HEIGHT,
    SceneConfig,
    make_scene,
    render,
    write_dataset,
)
from posenet_ros.verify import MapLocalizer, load_map
from posenet_ros.verify.build import parse_intrinsics
from posenet_ros.verify.mapfile import MAP_VERSION, default_map_path, save_map
from posenet_ros.verify.refine import pose_covariance
from posenet_ros.verify.triangulation import project

N_TRAIN, N_TEST = 80, 24
# Bounds at ~1.5x the worst of scene seeds 0-4 in this file's setup (coarse pose = truth moved
# 0.5 m and turned 10 deg): every test frame verified (the bound allows 10 % unverified), worst
# median error 0.0066 m / 0.066 deg, no wrong verified frame, map points 0.010 m (median) /
# 0.047 m (p90) from the true surfaces, at most 11 inliers on another scene.
MIN_VERIFIED = 0.9
MAX_MEDIAN_T, MAX_MEDIAN_R = 0.01, 0.1  # m, deg
MAX_SURFACE_MEDIAN, MAX_SURFACE_P90 = 0.015, 0.07  # m, map points to the true surfaces
# The briefly trained model (4 epochs, coarse median 3.4-4.2 m) over seeds 0-4: worst 83 %
# verified, worst median error 0.011 m, none wrong. Over seeds 0-2 and seven CPU kernel paths
# (scripts/learning_spread.py): worst 79 % verified and 0.0124 m, so the bounds (70 %,
# 0.02 m) keep the worst case near 70 % of the margin (docs/testing.md).
MIN_VERIFIED_TRAINED, MAX_MEDIAN_T_TRAINED = 0.7, 0.02
WRONG = (0.25, 2.0)  # a verified pose farther than this is wrong (m, deg)


def surface_distance(points: np.ndarray, scene) -> np.ndarray:
    """Distance (m) of map points to the nearest surface of the rendered courtyard."""
    x0, x1, y0, y1 = ROOM
    lo, hi = np.array([x0, y0, 0.0]), np.array([x1, y1, WALL_HEIGHT])
    d = np.minimum(np.abs(points - lo), np.abs(points - hi))
    d[:, 2] = np.abs(points[:, 2])  # open to the sky: the ground is the only horizontal face
    best = d.min(axis=1)
    for blo, bhi, _ in scene.boxes:
        outside = np.linalg.norm(np.maximum(np.maximum(blo - points, points - bhi), 0), axis=1)
        inside = np.all((points >= blo) & (points <= bhi), axis=1)
        to_face = np.minimum(np.abs(points - blo), np.abs(points - bhi)).min(axis=1)
        best = np.minimum(best, np.where(inside, to_face, outside))
    return best


def copy_into(folder: Path, samples) -> Path:
    """A manifest dataset of ``samples`` in ``folder`` (manifest paths live inside it)."""
    for s in samples:
        dst = folder / s.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(s.image_path.read_bytes())
        s.image_path = dst
    write_manifest(folder, samples)
    return folder


def perturbed(sample, rng, metres: float = 0.5, degrees: float = 10.0):
    """The true pose moved by ``metres`` and turned by ``degrees`` (a typical PoseNet error)."""
    d = rng.normal(size=3)
    dq = tq.axangle2quat(rng.normal(size=3), math.radians(degrees))
    return sample.position + metres * d / np.linalg.norm(d), tq.qmult(dq, sample.quaternion)


@slow_fixture(scope='module')
def scene(tmp_path_factory):
    """Rendered dataset (seed 0), a random-init export and its map built by the real CLI."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('verify')
    cfg = SceneConfig(seed=SEED, n_train=N_TRAIN, n_test=N_TEST)
    ds = sabotage_labels(write_dataset(root / 'dataset', cfg, progress=False))
    model = make_tiny_export(root, name='tiny')
    assert cli_main(['map', '--model', str(model), '--dataset', str(ds), '--quiet']) == 0
    return root, ds, model, default_map_path(model)


@pytest.mark.learning
def test_map_is_tied_to_the_model_and_its_points_lie_on_the_scene(scene):
    _, ds, model, map_path = scene
    m = load_map(map_path, model_id=read_metadata(model)['model_id'])
    train = load_dataset(ds, 'train')
    assert map_path.parent == model.parent and m.n_frames == len(train) == N_TRAIN
    assert m.header['version'] == MAP_VERSION and m.feature == 'sift'
    assert m.header['frame_names'] == [s.name for s in train]
    np.testing.assert_allclose(m.frame_position, [s.position for s in train])
    assert len(m.points) >= 1000 and m.frame_global.shape[1] > 0
    # the points lie on the courtyard's surfaces (ground, walls, crates): geometry, not noise
    dist = surface_distance(m.points, make_scene(SEED))
    check_below('verify.map_points_to_surface_median_m', np.median(dist), MAX_SURFACE_MEDIAN)
    check_below('verify.map_points_to_surface_p90_m', np.percentile(dist, 90), MAX_SURFACE_P90)
    # every stored keypoint reprojects onto its point with the renderer's true pose
    for f in range(0, m.n_frames, 7):
        rows = m.frame_slice(f)
        uv, z = project(m.frame_K[f], invert(train[f].matrix), m.points[m.obs_point[rows]])
        assert np.all(z > 0)
        assert np.max(np.linalg.norm(uv - m.obs_xy[rows], axis=1)) <= 2.0 + 1e-6
    assert np.all(m.point_views >= 3)


@pytest.mark.learning
def test_held_out_frames_are_verified_within_centimetres(scene):
    root, ds, model, map_path = scene
    loc = MapLocalizer(load_map(map_path))
    rng = np.random.default_rng(0)
    test = load_dataset(ds, 'test')
    results = []
    for s in test:
        p, q = perturbed(s, rng)
        results.append(loc.localize(load_image(s), s.intrinsics, p, q))
    ok = [v for v in results if v.verified]
    verified = [s for s, v in zip(test, results) if v.verified]
    check_below('verify.unverified_fraction', 1 - len(ok) / len(test), 1 - MIN_VERIFIED + 1e-9,
                str([v.reason for v in results]))
    t = translation_error([v.position for v in ok], [s.position for s in verified])
    r = rotation_error_deg([v.quaternion_wxyz for v in ok], [s.quaternion for s in verified])
    check_below('verify.verified_median_error_m', np.median(t), MAX_MEDIAN_T)
    check_below('verify.verified_median_error_deg', np.median(r), MAX_MEDIAN_R)
    check_below('verify.wrong_verified_frames', np.sum((t > WRONG[0]) | (r > WRONG[1])), 1)
    for v in ok:
        assert v.n_inliers >= loc.cfg.min_inliers and v.reproj_rms_px <= loc.cfg.max_rms_px
        assert set(v.ms) == {'features', 'matching', 'pnp', 'total'}
        cov = v.covariance
        assert cov.shape == (6, 6) and np.allclose(cov, cov.T)
        assert np.all(np.linalg.eigvalsh(cov) > 0)
    # the covariance is honest: errors stay within a few sigma of the solution's Jacobian
    sig = np.sqrt([np.max(np.diag(v.covariance)[:3]) for v in ok])
    check_below('verify.median_error_in_sigmas', np.median(t / sig), 10)


def test_frames_of_another_scene_and_blank_frames_are_never_verified(scene):
    _, ds, _, map_path = scene
    loc = MapLocalizer(load_map(map_path))
    test = load_dataset(ds, 'test')
    other = make_scene(seed=1)
    K = test[0].intrinsics
    statuses = []
    for s in test[::2]:  # same poses, another courtyard: the prior points at the right frames
        frame = render(other, s.position, s.quaternion, K, 320, 240)
        v = loc.localize(frame, K, s.position, s.quaternion)
        assert not v.verified and v.position is None, v.reason
        statuses.append(v.status)
    s = test[0]
    covered = load_image(s).copy()
    covered[:, 40:] = 30  # a hand over most of the lens
    blank = {'black': np.zeros((240, 320, 3), np.uint8),
             'grey': np.full((240, 320, 3), 128, np.uint8), 'covered': covered}
    for name, frame in blank.items():
        v = loc.localize(frame, K, s.position, s.quaternion)
        assert not v.verified and v.position is None, (name, v.reason)
    assert loc.localize(blank['black'], K, s.position, s.quaternion).status == 'rejected'
    assert set(statuses) <= {'unverified', 'rejected'}


def test_localizer_checks_the_map_and_verifies_through_one_call(scene, tmp_path):
    _, ds, model, map_path = scene
    loc = Localizer(model, scene_map=map_path, warmup=1)
    assert loc.uses_features  # the map's features come from the export's own feature output
    s = load_dataset(ds, 'test')[3]
    res = loc.localize(load_image(s), K=s.intrinsics, verify=True,
                       prior=(s.position, s.quaternion))
    assert res.camera.position.shape == (3,)
    assert res.verified and res.verification.verified, res.verification.reason
    assert translation_error(res.refined.position, s.position) < 0.05
    np.testing.assert_allclose(res.refined.covariance, res.verification.covariance)
    # K defaults to the map's intrinsics for frames of the map's size
    res2 = loc.verify(loc.localize(load_image(s)), load_image(s),
                      prior=(s.position, s.quaternion))
    assert res2.verified
    # a Localizer over an already loaded Relocalizer verifies the same way
    res3 = Localizer(loc.relocalizer, scene_map=map_path).localize(
        load_image(s), K=s.intrinsics, verify=True, prior=(s.position, s.quaternion))
    assert res3.verified and res3.verification.n_inliers == res.verification.n_inliers
    other = make_tiny_export(tmp_path, name='other', seed=1)
    with pytest.raises(MapMismatchError, match='posenet-ros map'):
        Localizer(other, scene_map=map_path, warmup=1)


def test_a_verified_frame_costs_one_network_pass(scene):
    _, ds, model, map_path = scene
    loc = Localizer(model, scene_map=map_path, warmup=1)
    inner, passes = loc.relocalizer.model, []
    loc.relocalizer.model = lambda batch: (passes.append(int(batch.shape[0])), inner(batch))[1]
    s = load_dataset(ds, 'test')[5]
    res = loc.localize(load_image(s), K=s.intrinsics, verify=True,
                       prior=(s.position, s.quaternion))
    assert res.verified, res.verification.reason
    assert passes == [1]  # the retrieval feature came with the pose
    # the map's frame features and the query's are one feature space: the query's nearest
    # map frame in feature space is its nearest in pose too
    g = loc.scene_map.frame_global.astype(np.float32)
    sim = g @ res.feature / (np.linalg.norm(g, axis=1) * np.linalg.norm(res.feature))
    assert int(np.argmax(sim)) in res.verification.candidates


class _PoseOnly(torch.nn.Module):
    """An export as written before the feature output: the pose tensor alone."""

    def __init__(self, exported):
        super().__init__()
        self.exported = exported

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.exported(frames)[0]


def test_exports_without_the_feature_output_still_verify(scene, tmp_path):
    _, ds, model, map_path = scene
    meta = read_metadata(model)
    for key in ('outputs', 'feature'):
        del meta['output_convention'][key]
    legacy = tmp_path / 'legacy.ts'
    torch.jit.save(torch.jit.script(_PoseOnly(torch.jit.load(str(model)))), str(legacy),
                   _extra_files={'posenet_meta.json': json.dumps(meta)})
    reloc = Relocalizer(legacy, warmup=1)
    assert reloc.feature_dim == 0 and reloc.model_id == meta['model_id']
    s = load_dataset(ds, 'test')[3]
    assert reloc.predict(load_image(s)).feature is None
    with pytest.warns(UserWarning, match='re-export'):  # once, when the map is attached
        loc = Localizer(reloc, scene_map=map_path)
    assert not loc.uses_features
    res = loc.localize(load_image(s), K=s.intrinsics, verify=True,
                       prior=(s.position, s.quaternion))
    assert res.verified, res.verification.reason  # candidates by the coarse pose only
    # a map built from it has no retrieval features, and says why in the log
    out = tmp_path / 'legacy.map.npz'
    assert cli_main(['map', '--model', str(legacy), '--dataset', str(ds), '--quiet',
                     '--out', str(out), '--features', 'orb']) == 0
    assert load_map(out).frame_global.shape[1] == 0


def test_bad_map_files_give_clear_errors(scene, tmp_path, capsys):
    _, _, model, map_path = scene
    with pytest.raises(MapNotFoundError, match='posenet-ros map'):
        load_map(tmp_path / 'nope.map.npz')
    data = map_path.read_bytes()
    truncated = tmp_path / 'truncated.map.npz'
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptMapError, match='truncated'):
        load_map(truncated)
    garbage = tmp_path / 'garbage.map.npz'
    garbage.write_bytes(b'not a map at all' * 100)
    with pytest.raises(CorruptMapError):
        load_map(garbage)
    m = load_map(map_path)
    future = tmp_path / 'future.map.npz'
    save_map(m, future)
    with zipfile.ZipFile(future) as z:  # rewrite the header with another version
        members = {n: z.read(n) for n in z.namelist()}
    header = dict(m.header, version=MAP_VERSION + 1)
    buf = np.frombuffer(json.dumps(header).encode(), np.uint8)
    arrays = {n[:-4]: np.load(future, allow_pickle=False)[n[:-4]] for n in members}
    arrays['header'] = buf
    with open(future, 'wb') as fh:
        np.savez(fh, **arrays)
    with pytest.raises(IncompatibleMapError, match=f'version {MAP_VERSION + 1}'):
        load_map(future)
    with pytest.raises(MapMismatchError, match='rebuild'):
        load_map(map_path, model_id='0123456789ab')
    # the CLI turns them into one actionable line and exit code 1
    assert cli_main(['evaluate', '--model', str(model), '--dataset', str(scene[1]), '--map',
                     str(truncated), '--out', str(tmp_path / 'rep'), '--quiet']) == 1
    assert 'cannot be read' in capsys.readouterr().err


def test_missing_intrinsics_say_how_to_supply_them(scene, tmp_path):
    _, ds, model, _ = scene
    samples = load_dataset(ds, 'test')[:16]
    bare = [PoseSample(s.position, s.quaternion, 'train', image_path=s.image_path, name=s.name)
            for s in samples]
    folder = tmp_path / 'bare'
    folder.mkdir()
    copy_into(folder, bare)
    out = tmp_path / 'bare.map.npz'
    args = ['map', '--model', str(model), '--dataset', str(folder), '--out', str(out), '--quiet']
    with pytest.raises(MissingIntrinsicsError, match=r'--intrinsics fx,fy,cx,cy.*camera_info'):
        from posenet_ros.verify.build import main as map_main
        map_main(args[1:])
    assert not out.exists()
    K = samples[0].intrinsics
    flag = f'{K[0, 0]},{K[1, 1]},{K[0, 2]},{K[1, 2]}'
    np.testing.assert_allclose(parse_intrinsics(flag), K)
    with pytest.raises(MissingIntrinsicsError, match='four numbers'):
        parse_intrinsics('525,525')
    # with the flag the same frames map (test laps: 16 frames are enough for some points)
    try:
        assert cli_main([*args, '--intrinsics', flag]) == 0
        assert load_map(out).header['intrinsics_source'] == 'flag --intrinsics'
    except MapBuildError:  # pragma: no cover - only if 16 frames triangulate < 100 points
        pytest.fail('16 posed frames should triangulate at least 100 points')


@pytest.mark.parametrize('frames, message', [
    (slice(0, 80, 27), 'no covisible frame pairs'),  # 3 frames looking different ways
    (slice(0, 3), 'points triangulated'),  # 3 neighbours: too little parallax and overlap
])
def test_too_few_frames_fail_with_advice(scene, tmp_path, frames, message):
    from posenet_ros.verify.build import build_map

    _, ds, model, _ = scene
    folder = copy_into(tmp_path / 'few', load_dataset(ds, 'train')[frames])
    with pytest.raises(MapBuildError, match=message):
        build_map(model, tmp_path / 'few.map.npz', dataset=folder, progress=False)
    assert not (tmp_path / 'few.map.npz').exists()
    with pytest.raises(MapBuildError, match='pass --dataset'):  # none recorded in the export
        build_map(model, tmp_path / 'few.map.npz', progress=False)
    with pytest.raises(EmptySplitError, match='no samples'):  # an empty dataset/split
        build_map(model, tmp_path / 'few.map.npz', dataset=folder, split='test',
                  progress=False)


def test_covariance_matches_the_spread_of_repeated_solutions():
    """pose_covariance against Monte Carlo: PnP with known noise, many draws."""
    import cv2

    rng = np.random.default_rng(0)
    K = np.array([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]])
    X = rng.uniform([-2, -1.5, 4], [2, 1.5, 8], size=(60, 3))
    rvec0, tvec0 = np.array([0.05, -0.1, 0.02]), np.array([0.1, -0.2, 0.3])
    clean = cv2.projectPoints(X, rvec0, tvec0, K, None)[0].reshape(-1, 2)
    centres, covs = [], []
    for _ in range(200):
        img = clean + rng.normal(0, 1.0, clean.shape)
        _, rv, tv = cv2.solvePnP(X, img, K, None, flags=cv2.SOLVEPNP_ITERATIVE)
        R = cv2.Rodrigues(rv)[0]
        centres.append(-R.T @ tv.ravel())
        covs.append(pose_covariance(X, img, rv, tv, K))
    emp = np.cov(np.array(centres).T)
    pred = np.mean(covs, axis=0)[:3, :3]
    np.testing.assert_allclose(np.sqrt(np.diag(pred)), np.sqrt(np.diag(emp)), rtol=0.25)


@pytest.fixture(scope='module')
def trained(scene_model):
    """A briefly trained export (ImageNet EfficientNet-Lite0, the demo's recipe) and its map."""
    assert (scene_model.cfg.n_train, scene_model.cfg.n_test) == (N_TRAIN, N_TEST)
    return scene_model.root, scene_model.dataset, scene_model.model


@pytest.mark.learning
def test_evaluate_with_map_reports_coarse_and_refined_with_a_trained_model(trained):
    """No pose prior: candidates come from the trained network's pose and features."""
    from posenet_ros.evaluation.evaluate import load_summary

    root, ds, model = trained
    out = root / 'report'
    assert cli_main(['evaluate', '--model', str(model), '--dataset', str(ds), '--map',
                     str(default_map_path(model)), '--out', str(out), '--quiet',
                     '--no-baselines']) == 0
    summary = load_summary(out / 'summary.json')
    ver = summary['verification']
    assert set(summary['methods']) == {'posenet', 'refined'}
    assert ver['n_frames'] == N_TEST
    check_below('verify.trained_unverified_fraction', 1 - ver['verified_fraction'],
                1 - MIN_VERIFIED_TRAINED + 1e-9)
    check_below('verify.trained_wrong_verified_frames', ver['n_wrong_verified'], 1)
    check_below('verify.trained_verified_median_error_m', ver['verified_median_t_m'],
                MAX_MEDIAN_T_TRAINED)
    check_below('verify.trained_refined_vs_coarse_median_m',
                ver['verified_median_t_m'] / ver['coarse_median_t_m_on_verified'], 1.0)
    assert set(ver['ms']) == {'features', 'matching', 'pnp', 'total'}
    assert (out / 'cdf.png').stat().st_size > 0
    rows = (out / 'frames.csv').read_text().splitlines()
    assert 'ver_status' in rows[0] and 'refined_t_err_m' in rows[0]
    assert 'Verification against the scene map' in (out / 'summary.md').read_text()
