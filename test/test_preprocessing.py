"""Preprocessing against independent references (torchvision v2, OpenCV) on a real photo."""

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from helpers_model import random_frames, sample_image_rgb

from posenet_ros.core.errors import ConfigError, InvalidFrameError
from posenet_ros.model.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    TrainAugment,
    resize_shorter_side_uint8,
    resized_size,
)

MEAN = np.array(IMAGENET_MEAN, dtype=np.float32)
STD = np.array(IMAGENET_STD, dtype=np.float32)


@pytest.fixture(scope='module')
def photo():
    img = sample_image_rgb()
    assert img.shape == (600, 512, 3)  # portrait: the shorter side is the width
    return img


def _preprocess(img: np.ndarray, resize=256, crop=224) -> np.ndarray:
    out = Preprocess(resize, crop)(torch.from_numpy(img)[None])
    assert out.shape == (1, 3, crop, crop) and out.dtype == torch.float32
    return out[0].numpy()


ONE_LEVEL = 1.0 / 255.0 / min(IMAGENET_STD)  # one uint8 grey level after normalisation


def assert_same_up_to_uint8_rounding(ours, ref):
    """Equal to torchvision's uint8 resize, up to one grey level on a minority of pixels.

    With AVX2 both run the same vectorised uint8 kernel and agree to float precision; on a CPU
    without it (``ATEN_CPU_CAPABILITY=default``) the generic kernels round ~17-19 % of the
    values of these frames one grey level apart.
    """
    diff = np.abs(np.asarray(ours) - np.asarray(ref))
    assert diff.max() <= ONE_LEVEL + 1e-5, diff.max()
    assert (diff > 1e-4).mean() < 0.3, (diff > 1e-4).mean()


def test_matches_torchvision_v2_resize_centercrop_normalize(photo):
    # torchvision on the uint8 image: same filter (bilinear + antialias, uint8 kernel on the CPU
    # like ours), same crop offsets here (300x256 -> 224: offsets 38 and 16 are exact).
    x = torch.from_numpy(photo).permute(2, 0, 1)
    ref = T.Compose([T.Resize(256, antialias=True), T.CenterCrop(224),
                     T.ToDtype(torch.float32, scale=True),
                     T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(x).numpy()
    assert_same_up_to_uint8_rounding(_preprocess(photo), ref)
    # The float pipeline (what CUDA runs) differs only by uint8 rounding: <= 1 grey level.
    ref_float = T.Compose([T.Resize(256, antialias=True), T.CenterCrop(224),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(x.float() / 255.0).numpy()
    assert np.abs(_preprocess(photo) - ref_float).max() <= ONE_LEVEL + 1e-5


def test_close_to_opencv_inter_area(photo):
    # OpenCV INTER_AREA is a box filter, ours (= torchvision / PIL bilinear with antialias) a
    # triangle filter twice as wide: not identical on fine texture. Measured on this photo at
    # 2x: mean |diff| 2.1 grey levels, correlation 0.998. Tolerance: mean < 3, corr > 0.995.
    h, w = resized_size(600, 512, 256)
    assert (h, w) == (300, 256)
    small = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    top, left = (h - 224) // 2, (w - 224) // 2
    ref = small[top:top + 224, left:left + 224]
    ours = (_preprocess(photo).transpose(1, 2, 0) * STD + MEAN) * 255.0  # back to grey levels
    diff = np.abs(ours - ref)
    assert diff.mean() < 3.0, diff.mean()
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.995


def test_landscape_upscale_and_resized_size():
    img = random_frames((30, 50, 3), seed=1)  # shorter side 30 -> upscaled to 64
    assert resized_size(30, 50, 64) == (64, 106)  # floor(64 * 50 / 30) like torchvision
    out = Preprocess(64, 60)(torch.from_numpy(img)[None])
    x = torch.from_numpy(img).permute(2, 0, 1)  # uint8, as the CPU path resizes
    ref = T.Compose([T.Resize(64, antialias=True), T.CenterCrop(60),
                     T.ToDtype(torch.float32, scale=True),
                     T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(x)
    assert_same_up_to_uint8_rounding(out[0].numpy(), ref.numpy())


def test_uint8_cache_then_preprocess_matches_full_frame(photo):
    cached = resize_shorter_side_uint8(torch.from_numpy(photo), 256)
    assert cached.shape == (300, 256, 3) and cached.dtype == torch.uint8
    full = _preprocess(photo)
    via_cache = _preprocess(cached.numpy())
    # resizing a 256-sided image to 256 is the identity, so only uint8 rounding remains
    assert np.abs(full - via_cache).max() <= 0.5 / 255.0 / STD.min() + 1e-5
    batch = resize_shorter_side_uint8(torch.from_numpy(np.stack([photo, photo])), 128)
    assert batch.shape == (2, 150, 128, 3)


def test_scripted_equals_eager_on_two_sizes():
    pre = Preprocess(40, 32)
    scripted = torch.jit.script(pre)
    for shape in [(2, 48, 64, 3), (1, 97, 41, 3)]:
        x = torch.from_numpy(random_frames(shape, seed=2))
        torch.testing.assert_close(scripted(x), pre(x), atol=0, rtol=0)


def test_invalid_configuration_and_frames():
    with pytest.raises(ConfigError, match='crop <= resize'):
        Preprocess(200, 224)
    with pytest.raises(ConfigError, match='std'):
        Preprocess(256, 224, std=(0.2, 0.0, 0.2))
    with pytest.raises(InvalidFrameError):
        resize_shorter_side_uint8(torch.zeros(4, 4, 3), 8)  # float, not uint8
    with pytest.raises(InvalidFrameError):
        resize_shorter_side_uint8(torch.zeros(0, 4, 3, dtype=torch.uint8), 8)


def test_train_augment_deterministic_with_seeded_generator():
    frames = torch.from_numpy(random_frames((4, 40, 50, 3), seed=3))
    aug = TrainAugment(32, brightness=0.3, contrast=0.3, saturation=0.3)
    a = aug(frames, torch.Generator().manual_seed(7))
    b = aug(frames, torch.Generator().manual_seed(7))
    c = aug(frames, torch.Generator().manual_seed(8))
    assert a.shape == (4, 3, 32, 32)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a, c)


def test_train_augment_matches_torchvision_colour_functions():
    frames = torch.from_numpy(random_frames((3, 36, 40, 3), seed=4))
    aug = TrainAugment(32, brightness=0.4, contrast=0.4, saturation=0.4)
    params = aug.sample_params(3, 36, 40, torch.Generator().manual_seed(1))
    out = aug.apply(frames, params)
    for i in range(3):
        t, lo = params['tops'][i], params['lefts'][i]
        img = frames[i, t:t + 32, lo:lo + 32].permute(2, 0, 1).float() / 255.0
        img = TF.adjust_brightness(img, float(params['brightness'][i]))
        img = TF.adjust_contrast(img, float(params['contrast'][i]))
        img = TF.adjust_saturation(img, float(params['saturation'][i]))
        ref = TF.normalize(img, IMAGENET_MEAN, IMAGENET_STD)
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


def test_train_augment_without_jitter_is_a_normalised_crop():
    frames = torch.from_numpy(random_frames((2, 32, 32, 3), seed=5))
    aug = TrainAugment(32, brightness=0.0, contrast=0.0, saturation=0.0)
    out = aug(frames)
    ref = Preprocess(32, 32)(frames)  # same size: resize is the identity, the crop is everything
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    with pytest.raises(InvalidFrameError, match='smaller than'):
        aug(torch.zeros(1, 16, 40, 3, dtype=torch.uint8))
    with pytest.raises(ConfigError):
        TrainAugment(32, brightness=1.5)


@pytest.mark.parametrize('resize, crop', [(32, 32), (40, 32)])
def test_torch_export_dynamic_sizes_including_resize_equal_crop(resize, crop):
    # resize == crop once made the exported program specialise on the example's orientation;
    # check square, portrait, landscape and tiny frames against eager on one export.
    pre = Preprocess(resize, crop)
    dim = torch.export.Dim
    program = torch.export.export(
        pre, (torch.zeros(2, 35, 49, 3, dtype=torch.uint8),),
        dynamic_shapes={'frames': {0: dim('b', min=1, max=64), 1: dim('h', min=8, max=4096),
                                   2: dim('w', min=8, max=4096)}})
    exported = program.module()
    for i, shape in enumerate([(1, 32, 32, 3), (1, 40, 32, 3), (3, 32, 40, 3), (1, 8, 9, 3),
                               (2, 480, 640, 3)]):
        x = torch.from_numpy(random_frames(shape, seed=i))
        torch.testing.assert_close(exported(x), pre(x), atol=1e-5, rtol=0)
