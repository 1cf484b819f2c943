"""FrameStager: the GPU-style staging path (reused host buffer, device-side channel order).

There is no GPU here, so the tensor path runs with device='cpu' and an unpinned buffer: the same
code as on CUDA except ``pin_memory`` (the CUDA case is skipped when no GPU is present).
"""

import numpy as np
import pytest
import torch

from posenet_ros.image_conversion import decode_image, rgb_to_image_fields, to_rgb
from posenet_ros.node.frames import FrameStager


@pytest.fixture(scope='module')
def rgb():
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(21, 34, 3), dtype=np.uint8)


def _raw(rgb, encoding, padding):
    f = rgb_to_image_fields(rgb, encoding, row_padding=padding)
    return decode_image(f['encoding'], f['height'], f['width'], f['step'], f['is_bigendian'],
                        f['data'])


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'rgb16'])
def test_tensor_path_matches_cpu_conversion(rgb, encoding):
    stager = FrameStager(torch.device('cpu'), tensor_path=True, pin=False)
    raw = _raw(rgb, encoding, padding=6)
    out = stager.stage(raw)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8
    assert tuple(out.shape) == rgb.shape
    np.testing.assert_array_equal(out.numpy(), to_rgb(raw))


def test_host_buffer_is_reused_and_resized(rgb):
    stager = FrameStager(torch.device('cpu'), tensor_path=True, pin=False)
    stager.stage(_raw(rgb, 'bgr8', 0))
    first = stager._host
    stager.stage(_raw(rgb, 'bgr8', 4))
    assert stager._host is first  # same shape: no new allocation per frame
    stager.stage(_raw(rgb[:10], 'bgr8', 0))
    assert stager._host is not first and tuple(stager._host.shape) == (10, 34, 3)


def test_cpu_path_returns_numpy_rgb(rgb):
    stager = FrameStager(torch.device('cpu'))
    assert not stager.tensor_path and not stager.pin
    out = stager.stage(_raw(rgb, 'bgra8', 2))
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device here')
def test_cuda_path_pinned(rgb):
    stager = FrameStager(torch.device('cuda'))
    assert stager.tensor_path and stager.pin
    out = stager.stage(_raw(rgb, 'bgr8', 4))
    assert out.is_cuda and stager._host.is_pinned()
    np.testing.assert_array_equal(out.cpu().numpy(), rgb)
