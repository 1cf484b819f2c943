"""Export: eager == TorchScript == .pt2 on real frames of two sizes; metadata round trip."""

import json
import zipfile

import numpy as np
import pytest
import torch
from helpers_model import random_frames, sample_image_rgb, spread_head
from helpers_slow import slow_fixture

from posenet_ros.core.errors import ConfigError, IncompatibleModelError
from posenet_ros.model.export import (
    FEATURE_SPACE,
    FORMAT_VERSION,
    META_NAME,
    ExportedPoseNet,
    export_model,
    load_file,
    model_id_of,
    read_metadata,
    validate_metadata,
)
from posenet_ros.model.network import build_posenet

RESIZE, CROP = 72, 64
POS_MEAN, POS_SCALE = (10.0, -5.0, 1.5), 4.0


@slow_fixture(scope='module')
def exported(tmp_path_factory):
    """One resnet18 export (.ts + .pt2; torch.export takes ~10 s so it is shared)."""
    torch.manual_seed(0)
    net = spread_head(build_posenet('resnet18'), seed=1).eval()
    out_dir = tmp_path_factory.mktemp('export')
    result = export_model(net, out_dir=out_dir, name='scene', resize=RESIZE, crop=CROP,
                          pos_mean=POS_MEAN, pos_scale=POS_SCALE, map_frame='world',
                          camera_frame='cam0_optical', training={'epochs': 2, 'median_m': 0.5},
                          config={'backbone': 'resnet18', 'lr': 1e-4})
    eager = ExportedPoseNet(net, RESIZE, CROP, pos_mean=POS_MEAN, pos_scale=POS_SCALE).eval()
    return net, eager, result


def _frames():
    photo = sample_image_rgb()
    return [np.stack([photo[:300, :400], photo[300:, 100:500]]),   # 2 x 300x400, landscape
            random_frames((3, 97, 61, 3), seed=3)]                   # 3 x 97x61, odd portrait


def test_eager_torchscript_pt2_agree_on_two_sizes(exported):
    net, eager, result = exported
    ts, _ = load_file(result.ts_path)
    pt2, _ = load_file(result.pt2_path)
    for frames in _frames():
        x = torch.from_numpy(frames)
        with torch.no_grad():
            ref, ref_feature = eager(x)
            out_ts = ts(x)
            out_pt2 = pt2(x)
        assert ref.shape == (len(frames), 8) and ref.dtype == torch.float32
        assert ref_feature.shape == (len(frames), 2048) and ref_feature.dtype == torch.float32
        for out in (out_ts, out_pt2):  # both formats: (pose, feature) from one pass
            torch.testing.assert_close(out[0], ref, atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(out[1], ref_feature, atol=1e-4, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('backbone', ['googlenet', 'efficientnet_lite0'])
def test_torchscript_agrees_for_backbones_with_custom_layers(tmp_path, backbone):
    # googlenet and lite0 carry an input remap buffer and (lite0) TF 'same' padding computed
    # from the input size at run time: check they survive scripting at two frame sizes.
    torch.manual_seed(0)
    net = spread_head(build_posenet(backbone), seed=3).eval()
    result = export_model(net, out_dir=tmp_path, name=backbone, resize=70, crop=64, pt2=False)
    ts, meta = load_file(result.ts_path)
    assert meta['backbone'] == backbone
    eager = ExportedPoseNet(net, 70, 64).eval()
    for shape in [(1, 70, 95, 3), (2, 99, 71, 3)]:
        x = torch.from_numpy(random_frames(shape, seed=5))
        with torch.no_grad():
            torch.testing.assert_close(ts(x), eager(x), atol=1e-4, rtol=1e-5)


def test_output_convention(exported):
    net, eager, _ = exported
    x = torch.from_numpy(random_frames((16, 70, 90, 3), seed=9))
    with torch.no_grad():
        out, feature = eager(x)
        pre = eager.preprocess(x)
        raw = net(pre)
        # the feature is the pose head's relu(fc) of the pooled trunk features
        hidden = torch.relu(net.head.fc(net.trunk(pre).mean((2, 3))))
    torch.testing.assert_close(feature, hidden, atol=1e-5, rtol=1e-5)
    q = out[:, 3:7]
    torch.testing.assert_close(q.norm(dim=1), torch.ones(16), atol=1e-5, rtol=0)
    assert (q[:, 0] >= 0).all()
    # the test is meaningful: some raw quaternions had w < 0 and were flipped to -q
    flipped = raw[:, 3] < 0
    assert flipped.any() and (~flipped).any()
    unit_raw = raw[:, 3:] / raw[:, 3:].norm(dim=1, keepdim=True)
    torch.testing.assert_close(q[flipped], -unit_raw[flipped], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, 7], raw[:, 3:].norm(dim=1), atol=1e-5, rtol=1e-5)
    expected_pos = raw[:, :3] * POS_SCALE + torch.tensor(POS_MEAN)
    torch.testing.assert_close(out[:, :3], expected_pos, atol=1e-4, rtol=1e-5)


def test_metadata_round_trip(exported):
    _, _, result = exported
    meta = result.metadata
    assert read_metadata(result.ts_path) == meta
    assert read_metadata(result.pt2_path) == meta
    assert load_file(result.ts_path)[1] == meta
    assert meta['format_version'] == FORMAT_VERSION
    assert meta['backbone'] == 'resnet18'
    assert meta['input']['resize'] == RESIZE and meta['input']['crop'] == CROP
    assert meta['input']['color'] == 'rgb' and meta['input']['dynamic_hw'] is True
    assert meta['position_normalization']['mean'] == list(POS_MEAN)
    assert meta['position_normalization']['scale'] == POS_SCALE
    assert meta['output_convention']['columns'][-1] == 'raw_qnorm'
    assert meta['output_convention']['outputs'] == ['pose', 'feature']
    assert meta['output_convention']['feature'] == {'dim': 2048, 'space': FEATURE_SPACE}
    assert meta['frames'] == {'map_frame': 'world', 'camera_frame': 'cam0_optical'}
    assert meta['training'] == {'epochs': 2, 'median_m': 0.5}
    assert meta['config']['lr'] == 1e-4
    assert len(meta['model_id']) == 12
    assert meta['torch_version'] == torch.__version__
    assert meta['git_sha'] is None or len(meta['git_sha']) == 40
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in result.ts_path.parent.iterdir()) == ['scene.pt2', 'scene.ts']


def test_model_id_depends_on_weights_and_backbone(exported):
    net, eager, result = exported
    assert model_id_of(eager, 'resnet18') == result.metadata['model_id']
    assert model_id_of(eager, 'resnet34') != result.metadata['model_id']
    other = ExportedPoseNet(spread_head(build_posenet('resnet18'), seed=2), RESIZE, CROP,
                            pos_mean=POS_MEAN, pos_scale=POS_SCALE)
    assert model_id_of(other, 'resnet18') != result.metadata['model_id']


def test_export_does_not_touch_the_callers_net(tmp_path):
    net = build_posenet('mobilenet_v3_small').train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = export_model(net, out_dir=tmp_path, name='m', resize=40, crop=32, pt2=False)
    assert result.pt2_path is None and result.ts_path.is_file()
    assert net.training
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=0, rtol=0)


def test_validation_of_metadata_and_arguments(tmp_path):
    good = {'format_version': 1, 'backbone': 'x', 'input': {'resize': 1, 'crop': 1, 'mean': [],
            'std': []}, 'position_normalization': {}, 'output_convention': {}, 'frames': {},
            'model_id': 'abc'}
    assert validate_metadata(good) is good
    with pytest.raises(IncompatibleModelError, match='format_version 2'):
        validate_metadata({**good, 'format_version': 2})
    with pytest.raises(IncompatibleModelError, match='lacks'):
        validate_metadata({k: v for k, v in good.items() if k != 'model_id'})
    net = build_posenet('mobilenet_v3_small')
    with pytest.raises(ConfigError, match='pos_scale'):
        export_model(net, out_dir=tmp_path, name='m', resize=40, crop=32, pos_scale=0.0,
                     pt2=False)
    with pytest.raises(ConfigError, match='JSON'):
        export_model(net, out_dir=tmp_path, name='m', resize=40, crop=32, pt2=False,
                     training={'bad': object()})
    assert list(tmp_path.iterdir()) == []


def test_metadata_is_plain_json_inside_the_archive(exported):
    _, _, result = exported
    with zipfile.ZipFile(result.ts_path) as zf:
        name = next(n for n in zf.namelist() if n.endswith('extra/' + META_NAME))
        assert json.loads(zf.read(name)) == result.metadata


def test_relocalizer_on_pt2_and_its_shape_limits(exported):
    from posenet_ros.core.errors import InvalidFrameError
    from posenet_ros.model.relocalizer import Relocalizer

    _, eager, result = exported
    reloc = Relocalizer(result.pt2_path, warmup=1)
    assert reloc.format == 'pt2' and reloc.model_id == result.metadata['model_id']
    for shape in [(16, 16, 3), (121, 203, 3)]:  # 16 px: the Relocalizer's smallest frame
        frame = random_frames(shape, seed=11)
        with torch.no_grad():
            pose, feature = eager(torch.from_numpy(frame)[None])
        ref = pose[0].double().numpy()
        pred = reloc.predict(frame)
        np.testing.assert_allclose(pred.position, ref[:3], atol=1e-4)
        np.testing.assert_allclose(pred.quaternion_wxyz, ref[3:7], atol=1e-5)
        # a .pt2 gives the retrieval feature itself (no TorchScript sibling needed)
        np.testing.assert_allclose(pred.feature, feature[0].numpy(), atol=1e-4, rtol=1e-4)
    with pytest.raises(InvalidFrameError, match='8..8192 px'):
        reloc.predict(random_frames((16, 8200, 3)))
    with pytest.raises(InvalidFrameError, match='at least 16 px'):
        reloc.predict(random_frames((4, 40, 3)))
