"""Relocalizer: loading, validation, every error path, predictions and the predict CLI."""

import json
import time

import cv2
import numpy as np
import pytest
import torch
from helpers_model import make_tiny_export, random_frames, sample_image_rgb

from posenet_ros.core.errors import (
    CorruptModelError,
    DeviceUnavailableError,
    IncompatibleModelError,
    InvalidFrameError,
    ModelNotFoundError,
    NonFiniteOutputError,
    PoseNetError,
)
from posenet_ros.model.export import META_NAME, ExportedPoseNet, export_model
from posenet_ros.model.network import build_posenet
from posenet_ros.model.relocalizer import Relocalizer, main, resolve_device


@pytest.fixture(scope='module')
def model_ts(tmp_path_factory):
    return make_tiny_export(tmp_path_factory.mktemp('reloc'), backbone='resnet18', crop=48)


@pytest.fixture(scope='module')
def reloc(model_ts):
    return Relocalizer(model_ts, device='cpu', warmup=1)


def test_predict_matches_the_model_and_convention(reloc, model_ts):
    frame = random_frames((60, 80, 3), seed=1)
    pred = reloc.predict(frame)
    assert pred.position.shape == (3,) and pred.position.dtype == np.float64
    assert pred.quaternion_wxyz.shape == (4,) and pred.quaternion_wxyz.dtype == np.float64
    assert np.linalg.norm(pred.quaternion_wxyz) == pytest.approx(1.0, abs=1e-5)
    assert pred.quaternion_wxyz[0] >= 0
    assert pred.raw_quat_norm > 0 and pred.latency_ms > 0
    with torch.no_grad():
        pose, feature = reloc.model(torch.from_numpy(frame)[None])
    ref = pose[0].double().numpy()
    np.testing.assert_allclose(pred.position, ref[:3], atol=1e-5)
    np.testing.assert_allclose(pred.quaternion_wxyz, ref[3:7], atol=1e-6)
    # the same pass gives the retrieval feature the metadata announces
    assert reloc.feature_dim == reloc.metadata['output_convention']['feature']['dim'] == 2048
    assert pred.feature.shape == (2048,) and pred.feature.dtype == np.float32
    np.testing.assert_allclose(pred.feature, feature[0].numpy(), atol=1e-6)
    assert np.all(pred.feature >= 0) and np.any(pred.feature > 0)  # relu(fc)
    assert reloc.metadata['backbone'] == 'resnet18'
    assert reloc.model_id == reloc.metadata['model_id'] and reloc.device == torch.device('cpu')


def test_predict_batch_tensor_and_views(reloc):
    frames = random_frames((3, 50, 70, 3), seed=2)
    batch = reloc.predict_batch(frames)
    assert len(batch) == 3
    singles = [reloc.predict(f) for f in frames]
    for b, s in zip(batch, singles):
        np.testing.assert_allclose(b.position, s.position, atol=1e-4)
        np.testing.assert_allclose(b.quaternion_wxyz, s.quaternion_wxyz, atol=1e-5)
    assert len({p.latency_ms for p in batch}) == 1  # batch time / B, same for each frame
    assert reloc.predict_batch(list(frames))[1].position == pytest.approx(batch[1].position)
    t = reloc.predict_tensor(torch.from_numpy(frames[0]))
    np.testing.assert_allclose(t.position, singles[0].position, atol=1e-5)
    # a BGR->RGB view with negative strides is accepted
    bgr = np.ascontiguousarray(frames[0][..., ::-1])
    np.testing.assert_allclose(reloc.predict(bgr[..., ::-1]).position, singles[0].position,
                               atol=1e-5)
    # frames differ -> poses differ (the model is not constant)
    assert not np.allclose(batch[0].position, batch[1].position)


@pytest.mark.parametrize('frame, match', [
    (np.zeros((40, 40), np.uint8), r'\(H, W, 3\)'),
    (np.zeros((40, 40, 4), np.uint8), r'\(H, W, 3\)'),
    (np.zeros((40, 40, 3), np.float32), 'uint8'),
    (np.zeros((40, 40, 3), np.uint16), 'uint8'),
    (np.zeros((0, 40, 3), np.uint8), 'zero size'),
    (np.zeros((40, 0, 3), np.uint8), 'zero size'),
    (np.zeros((1, 1, 3), np.uint8), r'1x1 px; .*at least 16 px'),  # 1x1 once got a pose
    (np.zeros((15, 640, 3), np.uint8), r'640x15 px'),
    (np.array(['a']), 'uint8'),
])
def test_invalid_frames_rejected_before_running(reloc, frame, match):
    with pytest.raises(InvalidFrameError, match=match):
        reloc.predict(frame)


def test_invalid_batches_and_tensors(reloc):
    with pytest.raises(InvalidFrameError):
        reloc.predict_batch(np.zeros((40, 40, 3), np.uint8))  # not a batch
    with pytest.raises(InvalidFrameError, match='share shape'):
        reloc.predict_batch([np.zeros((40, 40, 3), np.uint8), np.zeros((41, 40, 3), np.uint8)])
    with pytest.raises(InvalidFrameError):
        reloc.predict_tensor(np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(InvalidFrameError):
        reloc.predict_tensor(torch.zeros(2, 40, 40, 3, dtype=torch.uint8))


def test_missing_truncated_and_random_files(tmp_path, model_ts):
    with pytest.raises(ModelNotFoundError, match='does not exist'):
        Relocalizer(tmp_path / 'absent.ts')
    data = model_ts.read_bytes()
    (tmp_path / 'trunc.ts').write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptModelError, match='truncated'):
        Relocalizer(tmp_path / 'trunc.ts')
    rng = np.random.default_rng(0)
    for suffix in ('.ts', '.pt2'):
        path = tmp_path / f'random{suffix}'
        path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        with pytest.raises(CorruptModelError):
            Relocalizer(path)
    (tmp_path / 'model.onnx').write_bytes(data)
    with pytest.raises(CorruptModelError, match='suffix'):
        Relocalizer(tmp_path / 'model.onnx')
    # all are PoseNetErrors, so the CLI prints the message and exits 1
    assert issubclass(CorruptModelError, PoseNetError)


def test_torchscript_without_metadata_or_wrong_version(tmp_path, model_ts):
    plain = torch.jit.script(torch.nn.Linear(2, 2))
    torch.jit.save(plain, str(tmp_path / 'plain.ts'))
    with pytest.raises(IncompatibleModelError, match='no posenet_meta.json'):
        Relocalizer(tmp_path / 'plain.ts')
    extra = {META_NAME: ''}
    module = torch.jit.load(str(model_ts), _extra_files=extra)
    meta = json.loads(extra[META_NAME])
    for bad, match in ((dict(meta, format_version=99), 'format_version 99'),
                       ({k: v for k, v in meta.items() if k != 'input'}, 'lacks')):
        torch.jit.save(module, str(tmp_path / 'bad.ts'),
                       _extra_files={META_NAME: json.dumps(bad)})
        with pytest.raises(IncompatibleModelError, match=match):
            Relocalizer(tmp_path / 'bad.ts')
    torch.jit.save(module, str(tmp_path / 'bad.ts'), _extra_files={META_NAME: '{not json'})
    with pytest.raises(IncompatibleModelError, match='JSON'):
        Relocalizer(tmp_path / 'bad.ts')


def test_valid_metadata_but_wrong_output_shape(tmp_path, model_ts):
    extra = {META_NAME: ''}
    torch.jit.load(str(model_ts), _extra_files=extra)
    wrong = torch.jit.script(ExportedPoseNet(build_posenet('resnet18'), 40, 32).preprocess)
    torch.jit.save(wrong, str(tmp_path / 'wrong.ts'), _extra_files=extra)
    with pytest.raises(IncompatibleModelError, match='output has shape'):
        Relocalizer(tmp_path / 'wrong.ts')


def test_nan_weights_give_non_finite_output_error(tmp_path):
    net = build_posenet('resnet18')
    with torch.no_grad():
        net.head.fc_xyz.weight[0, 0] = float('nan')
    path = export_model(net, out_dir=tmp_path, name='nan', resize=40, crop=32, pt2=False).ts_path
    reloc = Relocalizer(path, warmup=1)
    with pytest.raises(NonFiniteOutputError, match='non-finite'):
        reloc.predict(random_frames((40, 50, 3)))


def test_resolve_device():
    assert resolve_device('cpu') == torch.device('cpu')
    expected = 'cuda' if torch.cuda.is_available() else 'cpu'
    assert resolve_device('auto').type == expected
    for bad in ('gpu', 'cuda:x', 'mps'):
        with pytest.raises(DeviceUnavailableError):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match='CUDA is not available'):
            resolve_device('cuda')
        with pytest.raises(DeviceUnavailableError):
            resolve_device('cuda:1')
        with pytest.raises(DeviceUnavailableError):
            Relocalizer('whatever.ts', device='cuda')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_cuda_matches_cpu(model_ts):
    frame = random_frames((60, 80, 3), seed=4)
    cpu = Relocalizer(model_ts, device='cpu', warmup=1).predict(frame)
    gpu = Relocalizer(model_ts, device='cuda', warmup=1)
    for pred in (gpu.predict(frame), gpu.predict_tensor(torch.from_numpy(frame).cuda())):
        np.testing.assert_allclose(pred.position, cpu.position, atol=1e-3)


def test_predict_cli(tmp_path, model_ts, capsys):
    photo = sample_image_rgb()
    paths = []
    for i, crop in enumerate((photo, photo[100:400, 50:450])):
        path = tmp_path / f'img{i}.png'
        cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        paths.append(str(path))
    t0 = time.monotonic()
    assert main([str(model_ts), *paths]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith('#')]
    assert len(lines) == 2 and time.monotonic() - t0 < 60
    reloc = Relocalizer(model_ts, warmup=1)
    for line, path, img in zip(lines, paths, (photo, photo[100:400, 50:450])):
        fields = line.split()
        assert fields[0] == path and len(fields) == 10
        pred = reloc.predict(img)
        np.testing.assert_allclose([float(v) for v in fields[1:4]], pred.position, atol=1e-3)
        np.testing.assert_allclose([float(v) for v in fields[4:8]], pred.quaternion_wxyz,
                                   atol=1e-5)
    assert main([str(model_ts), str(tmp_path / 'missing.png')]) == 1
    assert 'cannot read image' in capsys.readouterr().err
