"""PoseNet backbones, heads and weight loading (all offline, random init unless stated)."""

import time

import pytest
import torch
import torchvision
from helpers_model import sample_image_rgb

from posenet_ros.core.errors import CheckpointError, UnknownBackboneError, WeightsUnavailableError
from posenet_ros.model.network import (
    AUX_WEIGHT,
    BACKBONES,
    EfficientNetLite0,
    build_posenet,
    imagenet_weights_file,
    lite0_weights_file,
)
from posenet_ros.model.preprocessing import Preprocess


@pytest.fixture()
def empty_torch_home(tmp_path, monkeypatch):
    """A torch hub cache with nothing in it (so nothing is ever found or downloaded)."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    return tmp_path / 'torch_home'


@pytest.mark.parametrize('backbone', BACKBONES)
def test_every_backbone_forward_shapes(backbone):
    torch.manual_seed(0)
    net = build_posenet(backbone).eval()
    assert net.backbone_name == backbone
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    outs = net.train().forward_train(torch.randn(2, 3, 64, 64))
    assert [w for w, _ in outs] == ([1.0, AUX_WEIGHT, AUX_WEIGHT] if backbone == 'googlenet'
                                    else [1.0])


def test_googlenet_aux_heads_train_only_and_get_gradients():
    torch.manual_seed(0)
    net = build_posenet('googlenet', dropout=0.0).train()
    x = torch.randn(2, 3, 64, 64)
    outs = net.forward_train(x)
    assert [w for w, _ in outs] == [1.0, 0.3, 0.3]
    assert all(o.shape == (2, 7) for _, o in outs)
    assert not torch.allclose(outs[0][1], outs[1][1])
    sum(w * o.square().sum() for w, o in outs).backward()
    for head in (net.aux1, net.aux2, net.head):
        assert head.fc_xyz.weight.grad is not None and head.fc_xyz.weight.grad.abs().sum() > 0
    # inference: the main head only, identical to forward_train's first output in eval mode
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.forward_train(x)[0][1])


def test_unknown_backbone():
    with pytest.raises(UnknownBackboneError, match='resnet18'):
        build_posenet('vgg16')


def test_imagenet_weights_missing_fails_fast(empty_torch_home):
    t0 = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match='resnet18-f37072fd.pth'):
        build_posenet('resnet18', pretrained='imagenet')
    assert time.monotonic() - t0 < 2.0
    assert not empty_torch_home.exists()  # nothing was downloaded or even created


def test_imagenet_weights_are_read_from_the_hub_cache(empty_torch_home):
    # Simulate a filled cache with a (random) torchvision state_dict at the path torchvision's
    # own downloader would use; build_posenet must load it into the trunk.
    path = imagenet_weights_file('resnet18')
    assert path.name == 'resnet18-f37072fd.pth' and str(empty_torch_home) in str(path)
    path.parent.mkdir(parents=True)
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), path)
    net = build_posenet('resnet18', pretrained='imagenet')
    torch.testing.assert_close(net.trunk.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)


def test_trunk_weights_from_local_file(tmp_path):
    ref = torchvision.models.mobilenet_v3_small(weights=None)
    path = tmp_path / 'mnv3s.pth'
    torch.save({'model': ref.state_dict(), 'epoch': 3}, path)  # checkpoint-style wrapper
    net = build_posenet('mobilenet_v3_small', pretrained=path)
    torch.testing.assert_close(net.trunk.features[3].block[0][0].weight,
                               ref.features[3].block[0][0].weight)
    # a PoseNet state_dict works too (trunk.* keys)
    torch.save(net.state_dict(), tmp_path / 'posenet.pth')
    net2 = build_posenet('mobilenet_v3_small', pretrained=tmp_path / 'posenet.pth')
    torch.testing.assert_close(net2.trunk.features[1].block[0][0].weight,
                               ref.features[1].block[0][0].weight)
    with pytest.raises(CheckpointError, match='does not match the resnet18 trunk'):
        build_posenet('resnet18', pretrained=path)
    with pytest.raises(WeightsUnavailableError, match='does not exist'):
        build_posenet('resnet18', pretrained=tmp_path / 'nope.pth')
    (tmp_path / 'junk.pth').write_bytes(b'not a torch file')
    with pytest.raises(CheckpointError, match='cannot read'):
        build_posenet('resnet18', pretrained=tmp_path / 'junk.pth')


def test_lite0_offline_weights_load_strictly_and_classify():
    sd = torch.load(lite0_weights_file(), map_location='cpu', weights_only=True)
    model = EfficientNetLite0(num_classes=1000).eval()
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = Preprocess(256, 224)(torch.from_numpy(sample_image_rgb())[None])
    with torch.no_grad():
        p1 = model(x).softmax(1)
        p2 = model(x).softmax(1)
    torch.testing.assert_close(p1, p2, atol=0, rtol=0)
    top5 = p1[0].topk(5).indices.tolist()
    # Grace Hopper in navy uniform: ImageNet 652 'military uniform'; 400 'academic gown' and
    # 667 'mortarboard' are the usual neighbours. A random or misloaded net gives ~0.001 each.
    assert 652 in top5 and 400 in top5, top5
    assert float(p1[0].max()) > 0.15


def test_lite0_imagenet_pretrained_trunk_equals_file():
    net = build_posenet('efficientnet_lite0', pretrained='imagenet')
    sd = torch.load(lite0_weights_file(), map_location='cpu', weights_only=True)
    torch.testing.assert_close(net.trunk._blocks[7]._depthwise_conv.weight,
                               sd['_blocks.7._depthwise_conv.weight'])
    torch.testing.assert_close(net.trunk._bn1.running_var, sd['_bn1.running_var'])
