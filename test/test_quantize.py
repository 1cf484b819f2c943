"""int8 export: a really trained model, quantized with the real tool and loaded as the node does.

The trained model is EfficientNet-Lite0 (the default backbone, offline ImageNet weights) fitted
for a few epochs on the rendered courtyard; the int8 copy is calibrated on its training frames
and compared with the fp32 export on the held-out frames. No timing is asserted.
"""

import copy
import math
import zipfile

import numpy as np
import pytest
import torch
from helpers_data import render_tiny_scene
from helpers_model import (
    make_tiny_export,
    one_torch_thread,  # noqa: F401 (autouse: one torch thread)
    random_frames,
    sample_image_rgb,
)

from posenet_ros.config import load_config
from posenet_ros.datasets import load_dataset, load_image
from posenet_ros.errors import (
    ConfigError,
    CorruptModelError,
    DatasetError,
    DeviceUnavailableError,
    IncompatibleModelError,
    ModelNotFoundError,
)
from posenet_ros.export import META_NAME, check_quantized_device, load_file, read_metadata
from posenet_ros.metrics import frame_errors
from posenet_ros.model import BACKBONES, build_posenet
from posenet_ros.quantize import (
    ENGINE,
    SCHEME,
    compare_models,
    quantize_export,
    quantize_network,
    static_same_padding,
)
from posenet_ros.relocalizer import Relocalizer
from posenet_ros.train import train

# torch.jit.* emit FutureWarning deprecation notices in torch 2.14; TorchScript is still needed
pytestmark = pytest.mark.filterwarnings('ignore:.*torch.jit.*:FutureWarning')
CROP = 48


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A Lite0 model that learned the tiny scene, its int8 copy and the held-out frames."""
    root = tmp_path_factory.mktemp('quantize')
    ds = render_tiny_scene(root, n_train=48, n_test=12, width=96, height=72)
    cfg = load_config(None, dict(
        dataset=str(ds), backbone='efficientnet_lite0', pretrained='imagenet', resize=54,
        crop=CROP, loss='beta', beta=4.0, dropout=0.0, lr=2e-3, warmup_epochs=1, epochs=12,
        batch_size=8, num_threads=1, progress=False, run_dir=str(root / 'run'),
        export_dir=str(root / 'models'), name='scene', export_pt2=False, seed=0))
    fp32 = train(cfg).export_ts
    result = quantize_export(fp32, ds, frames=24)
    return ds, fp32, result


def test_int8_export_loads_in_the_relocalizer_and_keeps_the_contract(trained):
    ds, fp32, result = trained
    assert result.path == fp32.with_name('scene.int8.ts') and result.n_calibration == 24
    meta = read_metadata(result.path)
    assert meta == result.metadata
    src = read_metadata(fp32)
    q = meta['quantization']
    assert q['scheme'] == SCHEME and q['engine'] == ENGINE == 'x86'
    assert q['n_calibration'] == 24 and q['calibration_dataset'] == str(ds)
    assert q['calibration_split'] == 'train' and q['torch_version'] == torch.__version__
    assert q['source_model_id'] == src['model_id'] != meta['model_id']
    assert q['fp32_modules'] == ['trunk.remap']
    for key in ('backbone', 'input', 'position_normalization', 'output_convention', 'frames',
                'training'):
        assert meta[key] == src[key], key
    # atomic write: nothing but the two exports in the folder
    assert sorted(p.name for p in fp32.parent.iterdir()) == ['scene.int8.ts', 'scene.ts']
    with zipfile.ZipFile(result.path) as zf:
        assert any(n.endswith('extra/' + META_NAME) for n in zf.namelist())

    reloc = Relocalizer(result.path, device='cpu')
    assert reloc.quantization == q and reloc.model_id == meta['model_id']
    assert torch.backends.quantized.engine == 'x86'
    photo = sample_image_rgb()
    frames = [load_image(load_dataset(ds, 'test')[0]), photo, photo[::-1, ::2].copy(),
              random_frames((37, 91, 3), seed=2)]
    for frame in frames:   # the node's call: one uint8 RGB frame of any size
        pred = reloc.predict(frame)
        assert np.all(np.isfinite(pred.position))
        assert abs(np.linalg.norm(pred.quaternion_wxyz) - 1.0) < 1e-6
        assert pred.quaternion_wxyz[0] >= 0 and pred.raw_quat_norm > 0
    batch = reloc.predict_batch(random_frames((3, 40, 60, 3), seed=4))
    singles = [reloc.predict(f) for f in random_frames((3, 40, 60, 3), seed=4)]
    for a, b in zip(batch, singles):   # the traced int8 network runs any batch size
        np.testing.assert_allclose(a.position, b.position, atol=1e-4)


def test_int8_stays_close_to_fp32_relative_to_the_models_error(trained):
    ds, fp32, result = trained
    test = load_dataset(ds, 'test')
    train_s = load_dataset(ds, 'train')
    cmp = compare_models(fp32, result.path, [load_image(test[0])], test, rounds=1)
    true_p = np.stack([s.position for s in test])
    true_q = np.stack([s.quaternion for s in test])
    mean_p = np.mean([s.position for s in train_s], axis=0)
    base_t = np.median(np.linalg.norm(true_p - mean_p, axis=1))
    print(f"fp32 {cmp['fp32_median_m']:.3f} m / {cmp['fp32_median_deg']:.1f} deg, int8 "
          f"{cmp['int8_median_m']:.3f} m / {cmp['int8_median_deg']:.1f} deg, diff "
          f"{cmp['diff_median_m']:.3f} m / {cmp['diff_median_deg']:.2f} deg, mean pose "
          f'{base_t:.3f} m')
    # The model learned something (else "close to fp32" says nothing): fp32 / mean pose
    # measured 0.66 / 0.77 / 0.84 with scene and training seeds 0 / 1 / 2 (this test: 0) ...
    assert cmp['fp32_median_m'] < 0.8 * base_t
    # ... and int8 moves its predictions by less than the model's own error. Measured with this
    # config, seeds 0 / 1 / 2: position difference 0.49 / 0.32 / 0.69 x the fp32 error,
    # rotation 0.56 / 0.42 / 0.21 x, int8 error 1.19 / 1.25 / 1.18 x the fp32 error. Bounds
    # with margin:
    assert cmp['diff_median_m'] < 0.8 * cmp['fp32_median_m']
    assert cmp['diff_median_deg'] < 0.8 * cmp['fp32_median_deg']
    assert cmp['int8_median_m'] < 1.6 * cmp['fp32_median_m']
    assert cmp['n_eval'] == len(test)
    # compare_models measures what the relocalizers predict
    reloc = Relocalizer(result.path)
    preds = [reloc.predict(load_image(s)) for s in test]
    t_err, _ = frame_errors(np.stack([p.position for p in preds]),
                            np.stack([p.quaternion_wxyz for p in preds]), true_p, true_q)
    assert np.median(t_err) == pytest.approx(cmp['int8_median_m'], rel=1e-6)
    assert cmp['fp32_ms'] > 0 and cmp['int8_ms'] > 0


def test_cli_prints_the_comparison(trained, tmp_path, capsys):
    from posenet_ros.cli import main

    ds, fp32, _ = trained
    out = tmp_path / 'cli.int8.ts'
    assert main(['quantize', str(fp32), '--dataset', str(ds), '--frames', '8', '--out',
                 str(out), '--eval-frames', '4']) == 0
    text = capsys.readouterr().out
    assert 'latency' in text and 'fp32' in text and 'int8' in text and 'x)' in text
    assert 'pose difference int8 vs fp32 on 4 test frames' in text
    assert read_metadata(out)['quantization']['n_calibration'] == 8


def test_int8_model_refuses_cuda_and_auto_picks_the_cpu(trained, monkeypatch):
    _, fp32, result = trained
    meta = read_metadata(result.path)
    with pytest.raises(DeviceUnavailableError, match='CPU only.*device cpu'):
        check_quantized_device(meta, 'cuda:0', result.path)
    with pytest.raises(DeviceUnavailableError, match='int8'):
        load_file(result.path, 'cuda')
    check_quantized_device(read_metadata(fp32), 'cuda')   # fp32 exports: no restriction
    # the engine is set on load (packed weights are unpacked for the current engine)
    monkeypatch.setattr(torch.backends.quantized, 'engine', 'qnnpack')
    load_file(result.path, 'cpu')
    assert torch.backends.quantized.engine == 'x86'
    # device 'auto' on a CUDA machine still runs an int8 model on the CPU
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert Relocalizer(result.path, device='auto', warmup=1).device.type == 'cpu'


def test_bad_inputs_give_clear_errors(trained, tmp_path):
    ds, fp32, result = trained
    with pytest.raises(ModelNotFoundError, match='does not exist'):
        quantize_export(tmp_path / 'missing.ts', ds)
    junk = tmp_path / 'junk.ts'
    junk.write_text('not a model')
    with pytest.raises(CorruptModelError, match='cannot be loaded'):
        quantize_export(junk, ds)
    with pytest.raises(CorruptModelError, match=r'\.ts'):
        quantize_export(fp32.with_suffix('.pt2'), ds)
    with pytest.raises(IncompatibleModelError, match='already an int8'):
        quantize_export(result.path, ds)
    with pytest.raises(DatasetError, match='cannot tell what kind'):
        quantize_export(fp32, tmp_path)                      # a folder without frames
    with pytest.raises(DatasetError, match="split 'val' has no samples"):
        quantize_export(fp32, ds, split='val')
    with pytest.raises(ConfigError, match='frames'):
        quantize_export(fp32, ds, frames=0)
    with pytest.raises(ConfigError, match='at least one'):
        quantize_export(fp32, [])
    assert not (tmp_path / 'missing.int8.ts').exists()


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    from posenet_ros.cli import main

    assert main(['quantize', str(tmp_path / 'nope.ts'), '--dataset', str(tmp_path)]) == 1
    assert 'posenet-ros quantize: error:' in capsys.readouterr().err


@pytest.mark.parametrize('crop', [32, 33, 48])
def test_static_same_padding_is_exact_at_the_crop_size(crop):
    torch.manual_seed(0)
    net = build_posenet('efficientnet_lite0').eval()
    static = static_same_padding(copy.deepcopy(net), crop)
    x = torch.randn(2, 3, crop, crop)
    with torch.no_grad():
        torch.testing.assert_close(static(x), net(x), atol=1e-5, rtol=1e-5)


def test_quantize_export_from_frames_in_memory(tmp_path):
    path = make_tiny_export(tmp_path, backbone='mobilenet_v3_small', crop=32, name='mnv3')
    result = quantize_export(path, list(random_frames((4, 40, 52, 3), seed=1)))
    ts, meta = load_file(result.path)
    assert meta['quantization']['calibration_dataset'] == 'frames passed in'
    assert meta['quantization']['calibration_split'] is None
    with torch.no_grad():
        out = ts(torch.from_numpy(random_frames((2, 40, 52, 3), seed=2)))
    assert out.shape == (2, 8) and bool(torch.isfinite(out).all())
    torch.testing.assert_close(out[:, 3:7].norm(dim=1), torch.ones(2), atol=1e-5, rtol=0)


@pytest.mark.parametrize('backbone', BACKBONES)
def test_every_backbone_quantizes(backbone):
    """All seven backbones go through FX quantization (33 px: odd sizes, 2x2 feature maps)."""
    torch.manual_seed(0)
    net = build_posenet(backbone).eval()
    x = torch.randn(2, 3, 33, 33)
    q = quantize_network(net, x, 33)
    with torch.no_grad():
        out, ref = q(x), net(x)
    assert out.shape == ref.shape == (2, 7)
    assert bool(torch.isfinite(out).all()) and not math.isnan(float(out.sum()))


def test_one_pixel_feature_maps_keep_the_pooling_in_fp32():
    # torch's int8 mean fails on 1x1 channels-last maps (ResNet at 32 px): head left in fp32
    net = build_posenet('resnet18').eval()
    q = quantize_network(net, torch.randn(2, 3, 32, 32), 32)
    with torch.no_grad():
        assert q(torch.randn(1, 3, 32, 32)).shape == (1, 7)
