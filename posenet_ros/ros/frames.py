"""Frame staging for the node's worker (CPU or GPU). No rclpy.

:class:`FrameStager` turns a :class:`~posenet_ros.core.image_conversion.RawFrame` into what the
relocalizer consumes. On CUDA it copies the raw pixels (padding dropped by ``np.copyto`` from the
strided view) into one reused pinned host buffer, uploads with ``non_blocking=True`` and does the
channel reordering on the GPU; resize, crop and normalisation run inside the exported model, on the
same device. On the CPU it converts with OpenCV and hands the numpy frame over.
"""

from __future__ import annotations

import numpy as np

from posenet_ros.core.image_conversion import RawFrame, to_rgb

__all__ = ['FrameStager']

# Channel orders the device path reorders itself (4:2:2 is converted on the host).
_DEVICE_ORDERS = ('rgb', 'bgr', 'rgba', 'bgra', 'mono')


class FrameStager:
    """Stage frames for ``Relocalizer.predict`` (CPU) or ``predict_tensor`` (CUDA).

    ``device`` is a ``torch.device``. ``pin`` defaults to ``device.type == 'cuda'`` (pinned
    memory needs CUDA); tests can force the tensor path on the CPU with ``tensor_path=True``.
    """

    def __init__(self, device, tensor_path: bool | None = None, pin: bool | None = None):
        import torch  # lazy: the node validates its parameters before paying for torch

        self._torch = torch
        self.device = torch.device(device)
        on_gpu = self.device.type == 'cuda'
        self.tensor_path = on_gpu if tensor_path is None else bool(tensor_path)
        self.pin = on_gpu if pin is None else bool(pin)
        self._host = None  # reused (pinned) torch staging buffer

    def _buffer(self, shape: tuple[int, ...]):
        if self._host is None or tuple(self._host.shape) != shape:
            torch = self._torch
            self._host = torch.empty(shape, dtype=torch.uint8, pin_memory=self.pin)
        return self._host

    def stage(self, frame: RawFrame):
        """Return a numpy RGB ``(H, W, 3)`` frame (CPU path) or a device tensor ``(H, W, 3)``."""
        if not self.tensor_path:
            return to_rgb(frame)
        order = frame.channel_order
        if order not in _DEVICE_ORDERS:
            # Packed 4:2:2 is rare on the hot path: convert on the host, then upload.
            rgb = to_rgb(frame)
            host = self._buffer(rgb.shape)
            np.copyto(host.numpy(), rgb)
            return host.to(self.device, non_blocking=True)
        host = self._buffer(tuple(frame.pixels.shape))
        np.copyto(host.numpy(), frame.pixels)  # drops row padding while copying
        dev = host.to(self.device, non_blocking=True)
        if order == 'mono':
            return dev.expand(-1, -1, 3)
        if order in ('rgba', 'bgra'):
            dev = dev[..., :3]  # drop alpha (a view)
        return dev.flip(-1) if order.startswith('bgr') else dev  # flip: a device-side copy
