"""Image preprocessing shared by the trainer, the exported model and the node.

Everything is torch and runs on any device. Frames enter as ``uint8`` tensors ``(B, H, W, 3)`` in
RGB order (the layout of a decoded camera image, so no host-side transposition is needed) and
leave as normalised ``float32`` tensors ``(B, 3, crop, crop)``.

Inference (:class:`Preprocess`, baked into every export): resize the shorter side to ``resize``
(bilinear with antialiasing, the filter torchvision's ``Resize`` uses on tensors; close to
OpenCV ``INTER_AREA`` when downscaling), centre crop ``crop x crop``, scale to [0, 1], normalise.

Training: :func:`resize_shorter_side_uint8` builds the decoded-and-resized uint8 cache with the
same resize, and :class:`TrainAugment` takes random crops and colour jitter from it with an
explicit :class:`torch.Generator` so runs are reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from posenet_ros.core.errors import ConfigError, InvalidFrameError

__all__ = [
    'IMAGENET_MEAN', 'IMAGENET_STD', 'Preprocess', 'TrainAugment', 'resize_shorter_side_uint8',
    'resized_size',
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ITU-R 601 luma weights as torchvision's rgb_to_grayscale (saturation/contrast jitter).
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (height, width) when the shorter side of ``height x width`` is resized to ``size``.

    The longer side is ``floor(size * long / short)`` as torchvision's ``Resize(int)``; integer
    arithmetic keeps it exact and traceable with symbolic sizes.
    """
    short = min(height, width)
    return (height * size) // short, (width * size) // short


def _check_sizes(resize: int, crop: int) -> None:
    if int(crop) < 1 or int(resize) < int(crop):
        raise ConfigError(f'need 1 <= crop <= resize, got resize={resize}, crop={crop}; '
                          'use e.g. resize=256, crop=224')


def _as_buffer(values: Sequence[float], name: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    if t.numel() != 3:
        raise ConfigError(f'{name} must have 3 values (R, G, B), got {list(t.tolist())}')
    if name == 'std' and bool((t <= 0).any()):
        raise ConfigError(f'std must be positive, got {list(t.tolist())}')
    return t.reshape(1, 3, 1, 1)


def _shorter_side(h: int, w: int) -> int:
    # torch.export traces with symbolic H/W: a Python `min` would branch (and specialise) on the
    # comparison, torch.sym_min does not. TorchScript does not know sym_min but has plain ints.
    if torch.jit.is_scripting():
        return min(h, w)
    return torch.sym_min(h, w)


def _resize_float(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(B, C, H, W)`` so its shorter side is ``size`` (bilinear, antialiased).

    Works on float tensors everywhere and on uint8 tensors on the CPU (torch's uint8 antialiased
    kernel is ~6x faster than float for a 640x480 frame and rounds to the same uint8 values).
    """
    h = x.shape[-2]
    w = x.shape[-1]
    short = _shorter_side(h, w)
    new_h = (h * size) // short
    new_w = (w * size) // short
    return F.interpolate(x, size=[new_h, new_w], mode='bilinear', align_corners=False,
                         antialias=True)


class Preprocess(nn.Module):
    """``uint8 (B, H, W, 3)`` RGB frames -> normalised ``float32 (B, 3, crop, crop)``.

    Any H and W: the shorter side is resized to ``resize``, then a ``crop x crop`` window is cut
    from the centre (offset ``(size - crop) // 2``). TorchScript-scriptable and exportable with
    ``torch.export`` with dynamic batch, height and width (including ``resize == crop``).
    """

    def __init__(self, resize: int = 256, crop: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        _check_sizes(resize, crop)
        self.resize = int(resize)
        self.crop = int(crop)
        self.register_buffer('mean', _as_buffer(mean, 'mean'))
        self.register_buffer('std', _as_buffer(std, 'std'))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Preprocess a batch of frames; see the class docstring."""
        x = frames.permute(0, 3, 1, 2)
        if x.is_cuda:
            # CUDA has no uint8 antialiased kernel: resize in float on the GPU.
            x = _resize_float(x.to(torch.float32), self.resize)
        else:
            # CPU: resize in uint8 (~1.5 ms instead of ~9 ms for 640x480), then convert. The
            # result equals the float path rounded to uint8 (max 1 grey level apart), i.e. the
            # same values the trainer's uint8 cache holds.
            x = _resize_float(x, self.resize).to(torch.float32)
        top = (x.shape[-2] - self.crop) // 2
        left = (x.shape[-1] - self.crop) // 2
        # Centre crop by index_select, not slicing/narrow: a view makes torch.export specialise
        # on whether the resized side equals `crop` (stride/contiguity checks), which broke
        # resize == crop exports for portrait or landscape frames. The result is a fresh
        # (B, 3, crop, crop) tensor whose size is a constant.
        rows = torch.arange(self.crop, device=x.device) + top
        cols = torch.arange(self.crop, device=x.device) + left
        x = x.index_select(2, rows).index_select(3, cols)
        return (x / 255.0 - self.mean) / self.std


def resize_shorter_side_uint8(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 frames ``(B, H, W, 3)`` or ``(H, W, 3)`` so the shorter side is ``size``.

    Same filter as :class:`Preprocess` (then rounded back to uint8), so a cache built with it and
    fed to :class:`Preprocess` / :class:`TrainAugment` matches inference on the full frame up to
    uint8 rounding. Returns the same layout and device as the input.
    """
    if not isinstance(frames, torch.Tensor):
        frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.dim() not in (3, 4) or frames.shape[-1] != 3:
        raise InvalidFrameError(f'expected uint8 (B, H, W, 3) or (H, W, 3) frames, got '
                                f'{frames.dtype} {tuple(frames.shape)}')
    single = frames.dim() == 3
    batch = frames.unsqueeze(0) if single else frames
    if batch.shape[1] == 0 or batch.shape[2] == 0:
        raise InvalidFrameError(f'frames have zero size {tuple(frames.shape)}')
    x = batch.permute(0, 3, 1, 2)
    if x.is_cuda:
        x = _resize_float(x.to(torch.float32), int(size)).round_().clamp_(0, 255).to(torch.uint8)
    else:
        x = _resize_float(x, int(size))  # uint8 kernel, same path as Preprocess on the CPU
    out = x.permute(0, 2, 3, 1).contiguous()
    return out[0] if single else out


class TrainAugment(nn.Module):
    """Training-time augmentation of resized uint8 frames -> normalised ``(B, 3, crop, crop)``.

    Per sample: a uniformly random ``crop x crop`` window, then colour jitter with factors drawn
    uniformly from ``[1 - s, 1 + s]`` applied in the fixed order brightness, contrast, saturation
    (torchvision ``ColorJitter`` maths, vectorised over the batch), then ``/255`` and normalise.
    All randomness comes from ``generator`` (a CPU :class:`torch.Generator`), so a seeded
    generator gives the same crops and factors on any device.
    """

    def __init__(self, crop: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, brightness: float = 0.2,
                 contrast: float = 0.2, saturation: float = 0.2,
                 generator: torch.Generator | None = None):
        super().__init__()
        if int(crop) < 1:
            raise ConfigError(f'crop must be >= 1, got {crop}')
        for name, value in (('brightness', brightness), ('contrast', contrast),
                            ('saturation', saturation)):
            if not 0.0 <= float(value) < 1.0:
                raise ConfigError(f'{name} jitter strength must be in [0, 1), got {value}')
        self.crop = int(crop)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.saturation = float(saturation)
        self.generator = generator if generator is not None else torch.Generator()
        self.register_buffer('mean', _as_buffer(mean, 'mean'))
        self.register_buffer('std', _as_buffer(std, 'std'))
        self.register_buffer('gray', torch.tensor(_GRAY_WEIGHTS).reshape(1, 3, 1, 1))

    def _factors(self, strength: float, n: int, gen: torch.Generator) -> torch.Tensor | None:
        if strength <= 0:
            return None
        return torch.empty(n).uniform_(1.0 - strength, 1.0 + strength, generator=gen)

    def sample_params(self, batch: int, height: int, width: int,
                      generator: torch.Generator | None = None) -> dict:
        """Draw the random parameters of one batch.

        Crop ``tops``/``lefts`` (lists of int) and ``brightness``/``contrast``/``saturation``
        factors (CPU tensors ``(B,)``, or None when that jitter is off).
        """
        gen = generator if generator is not None else self.generator
        c = self.crop
        if height < c or width < c:
            raise InvalidFrameError(f'frames {height}x{width} are smaller than the {c}x{c} crop; '
                                    'resize them with resize_shorter_side_uint8 first')
        return {
            'tops': torch.randint(0, height - c + 1, (batch,), generator=gen).tolist(),
            'lefts': torch.randint(0, width - c + 1, (batch,), generator=gen).tolist(),
            'brightness': self._factors(self.brightness, batch, gen),
            'contrast': self._factors(self.contrast, batch, gen),
            'saturation': self._factors(self.saturation, batch, gen),
        }

    def apply(self, frames: torch.Tensor, params: dict) -> torch.Tensor:
        """Crop, jitter and normalise ``frames`` with explicit ``params`` (see sample_params)."""
        c = self.crop
        x = torch.stack([frames[i, t:t + c, lo:lo + c] for i, (t, lo) in
                         enumerate(zip(params['tops'], params['lefts']))])
        x = x.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        dev = x.device
        fb, fc, fs = params['brightness'], params['contrast'], params['saturation']
        if fb is not None:
            x = (x * fb.to(dev).view(-1, 1, 1, 1)).clamp_(0.0, 1.0)
        if fc is not None:
            # blend with the mean grey level of each image (torchvision adjust_contrast)
            gray_mean = (x * self.gray).sum(1, keepdim=True).mean((2, 3), keepdim=True)
            f = fc.to(dev).view(-1, 1, 1, 1)
            x = (f * x + (1.0 - f) * gray_mean).clamp_(0.0, 1.0)
        if fs is not None:
            # blend with the greyscale image (torchvision adjust_saturation)
            gray = (x * self.gray).sum(1, keepdim=True)
            f = fs.to(dev).view(-1, 1, 1, 1)
            x = (f * x + (1.0 - f) * gray).clamp_(0.0, 1.0)
        return (x - self.mean) / self.std

    def forward(self, frames: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``frames`` uint8 ``(B, H, W, 3)`` with H, W >= crop."""
        if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
            raise InvalidFrameError(f'expected uint8 (B, H, W, 3) frames, got {frames.dtype} '
                                    f'{tuple(frames.shape)}')
        b, h, w, _ = frames.shape
        return self.apply(frames, self.sample_params(b, h, w, generator))
