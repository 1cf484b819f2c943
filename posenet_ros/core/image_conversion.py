"""``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` payloads -> RGB numpy (no rclpy).

The functions take the message *fields* (or any object carrying them), so they run and are tested
without ROS. cv_bridge is deliberately not used (it breaks under NumPy 2 and ignores row padding):

* raw images are read with ``np.frombuffer`` (zero-copy over the message buffer), rows are cut to
  ``width * channels`` bytes so ``step`` padding is honoured, and 16-bit encodings are byte-swapped
  according to ``is_bigendian`` before being scaled to 8 bits;
* OpenCV is used only for colour conversion and JPEG/PNG decoding.

Every malformed input raises
:class:`~posenet_ros.core.errors.ImageConversionError` with a message that
names the field at fault, so the node can reject the frame, count it and carry on.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from posenet_ros.core.errors import ImageConversionError

__all__ = [
    'RAW_ENCODINGS', 'RawFrame', 'decode_image', 'decode_compressed', 'to_rgb', 'image_msg_to_rgb',
    'compressed_msg_to_rgb', 'rgb_to_image_fields', 'rgb_to_compressed',
]

# encoding -> (channels, bytes per channel, channel order). Orders: 'rgb', 'bgr', 'rgba', 'bgra',
# 'mono', and the two packed 4:2:2 layouts (2 bytes per pixel) that many USB cameras emit.
RAW_ENCODINGS: dict[str, tuple[int, int, str]] = {
    'rgb8': (3, 1, 'rgb'),
    'bgr8': (3, 1, 'bgr'),
    'rgba8': (4, 1, 'rgba'),
    'bgra8': (4, 1, 'bgra'),
    'mono8': (1, 1, 'mono'),
    '8UC1': (1, 1, 'mono'),
    '8UC3': (3, 1, 'bgr'),  # OpenCV's default channel order
    'rgb16': (3, 2, 'rgb'),
    'bgr16': (3, 2, 'bgr'),
    'rgba16': (4, 2, 'rgba'),
    'bgra16': (4, 2, 'bgra'),
    'mono16': (1, 2, 'mono'),
    'yuv422': (2, 1, 'uyvy'),  # ROS 'yuv422' is UYVY
    'uyvy': (2, 1, 'uyvy'),
    'yuv422_yuy2': (2, 1, 'yuyv'),
    'yuyv': (2, 1, 'yuyv'),
}

# channel order -> OpenCV conversion code to RGB (None: already RGB).
_TO_RGB = {
    'rgb': None,
    'bgr': cv2.COLOR_BGR2RGB,
    'rgba': cv2.COLOR_RGBA2RGB,
    'bgra': cv2.COLOR_BGRA2RGB,
    'mono': cv2.COLOR_GRAY2RGB,
    'uyvy': cv2.COLOR_YUV2RGB_UYVY,
    'yuyv': cv2.COLOR_YUV2RGB_YUYV,
}

_MAX_SIDE = 16384  # larger sides are almost certainly a corrupt header, not a camera


@dataclass(frozen=True)
class RawFrame:
    """An 8-bit image in its transmitted channel order, before colour conversion.

    ``pixels`` is ``(H, W, C)`` uint8 and may be a strided, read-only view of the message buffer
    (no copy was made); ``channel_order`` is one of the keys of the colour-conversion table
    ('rgb', 'bgr', 'rgba', 'bgra', 'mono', 'uyvy', 'yuyv').
    """

    pixels: np.ndarray
    channel_order: str


def _byte_buffer(data, what: str) -> np.ndarray:
    """``data`` as a flat uint8 array (no copy); ImageConversionError naming ``what`` if not."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError) as exc:
        raise ImageConversionError(f'{what} is not a byte buffer: {exc}') from exc


def decode_image(encoding: str, height: int, width: int, step: int, is_bigendian,
                 data) -> RawFrame:
    """View a raw ``sensor_msgs/Image`` payload as ``(H, W, C)`` uint8 without copying 8-bit data.

    ``data`` is anything exposing the buffer protocol (``bytes``, ``array.array``, numpy). Raises
    :class:`ImageConversionError` for an unknown encoding, a zero or absurd size, a ``step``
    smaller than one row, or a payload whose length is not ``step * height`` (truncated or
    oversized).
    """
    if encoding not in RAW_ENCODINGS:
        known = ', '.join(sorted(RAW_ENCODINGS))
        raise ImageConversionError(
            f'unsupported image encoding {encoding!r}; publish one of: {known} '
            '(or use the compressed transport)')
    channels, depth, order = RAW_ENCODINGS[encoding]
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f'image is empty ({width}x{height}); check the camera driver')
    if height > _MAX_SIDE or width > _MAX_SIDE:
        raise ImageConversionError(f'image size {width}x{height} is implausible (corrupt header?)')
    row_bytes = width * channels * depth
    if order in ('uyvy', 'yuyv') and width % 2:
        raise ImageConversionError(f'{encoding} needs an even width, got {width}')
    if step < row_bytes:
        raise ImageConversionError(
            f'step {step} is smaller than one row of {width} px {encoding} ({row_bytes} bytes)')
    buf = _byte_buffer(data, 'image data')
    if buf.size != step * height:
        what = 'truncated' if buf.size < step * height else 'longer than expected'
        raise ImageConversionError(
            f'image data is {what}: {buf.size} bytes, expected step*height = {step}*{height} = '
            f'{step * height}')
    # Rows of `step` bytes, of which the first `row_bytes` are pixels (the rest is padding).
    rows = buf.reshape(height, step)[:, :row_bytes]
    if depth == 1:
        return RawFrame(rows.reshape(height, width, channels), order)
    # 16-bit: interpret with the message's byte order, keep the high byte (a copy is unavoidable).
    dtype = np.dtype('>u2' if is_bigendian else '<u2')
    wide = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
    return RawFrame((wide >> 8).astype(np.uint8), order)


def decode_compressed(fmt: str, data) -> RawFrame:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG or PNG) to a BGR :class:`RawFrame`.

    ``fmt`` follows image_transport (``'jpeg'``, ``'png'``, ``'rgb8; jpeg compressed bgr8'``). The
    colour part of ``fmt`` only names the encoding before compression: JPEG/PNG payloads always
    decode to standard colour, which OpenCV returns as BGR. ``compressedDepth`` payloads (depth
    maps) are refused.
    """
    fmt_l = (fmt or '').lower()
    if 'compresseddepth' in fmt_l:
        raise ImageConversionError(
            f'format {fmt!r} is a compressed depth image; subscribe to a colour camera topic')
    buf = _byte_buffer(data, 'compressed data')
    if buf.size == 0:
        raise ImageConversionError('compressed image is empty (0 bytes)')
    try:
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error:  # some corrupt payloads raise instead of returning None
        bgr = None
    if bgr is None or bgr.size == 0:
        raise ImageConversionError(
            f'cannot decode {buf.size} bytes of {fmt or "unspecified format"!r} as JPEG/PNG '
            '(corrupt or truncated payload)')
    return RawFrame(bgr, 'bgr')


def to_rgb(frame: RawFrame, out: np.ndarray | None = None) -> np.ndarray:
    """Convert a :class:`RawFrame` to a C-contiguous ``(H, W, 3)`` uint8 RGB array.

    If ``out`` (the right shape, uint8, contiguous) is given it is filled and returned, so a caller
    can reuse one buffer (e.g. pinned memory) across frames.
    """
    code = _TO_RGB[frame.channel_order]
    src = frame.pixels
    h, w = src.shape[:2]
    if out is not None and (out.shape != (h, w, 3) or out.dtype != np.uint8
                            or not out.flags.c_contiguous):
        raise ImageConversionError(
            f'output buffer has shape {out.shape} {out.dtype}, need ({h}, {w}, 3) uint8')
    if code is None:
        if out is None:
            return np.ascontiguousarray(src)
        np.copyto(out, src)
        return out
    # OpenCV accepts the strided (row-padded), read-only view directly: no intermediate copy.
    if out is None:
        return cv2.cvtColor(src, code)
    cv2.cvtColor(src, code, dst=out)
    return out


def image_msg_to_rgb(msg) -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8 of a ``sensor_msgs/Image``-like object (duck-typed, no rclpy)."""
    return to_rgb(decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian,
                               msg.data))


def compressed_msg_to_rgb(msg) -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8 of a ``sensor_msgs/CompressedImage``-like object."""
    return to_rgb(decode_compressed(msg.format, msg.data))


def rgb_to_image_fields(rgb: np.ndarray, encoding: str = 'rgb8', row_padding: int = 0,
                        is_bigendian: bool = False) -> dict:
    """Encode an RGB ``(H, W, 3)`` uint8 image as ``sensor_msgs/Image`` fields.

    The inverse of :func:`decode_image`, used by publishers, tests and benchmarks: returns a dict
    with ``encoding``, ``height``, ``width``, ``step``, ``is_bigendian`` and ``data`` (``bytes``).
    ``row_padding`` extra bytes (filled with 0xAB so padding bugs show) end every row; 16-bit
    encodings replicate each byte (``v * 257``) in the requested byte order.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageConversionError(f'expected an (H, W, 3) uint8 RGB image, got {rgb.shape}')
    if encoding not in RAW_ENCODINGS:
        raise ImageConversionError(f'unsupported image encoding {encoding!r}')
    channels, depth, order = RAW_ENCODINGS[encoding]
    if order in ('uyvy', 'yuyv'):
        raise ImageConversionError(f'encoding to {encoding} is not supported')
    from_rgb = {'rgb': None, 'bgr': cv2.COLOR_RGB2BGR, 'rgba': cv2.COLOR_RGB2RGBA,
                'bgra': cv2.COLOR_RGB2BGRA, 'mono': cv2.COLOR_RGB2GRAY}[order]
    pix = rgb if from_rgb is None else cv2.cvtColor(rgb, from_rgb)
    pix = pix.reshape(rgb.shape[0], rgb.shape[1], channels)
    if depth == 2:
        pix = pix.astype(np.dtype('>u2' if is_bigendian else '<u2')) * 257
    h, w = rgb.shape[:2]
    row = pix.reshape(h, -1).view(np.uint8)
    if row_padding:
        row = np.concatenate([row, np.full((h, row_padding), 0xAB, np.uint8)], axis=1)
    return {'encoding': encoding, 'height': h, 'width': w, 'step': row.shape[1],
            'is_bigendian': bool(is_bigendian), 'data': np.ascontiguousarray(row).tobytes()}


def rgb_to_compressed(rgb: np.ndarray, fmt: str = 'jpeg', quality: int = 90) -> tuple[str, bytes]:
    """Encode RGB ``(H, W, 3)`` uint8 as image_transport's compressed payload.

    Returns ``(format, data)`` with ``format`` like ``'rgb8; jpeg compressed bgr8'``.
    """
    if fmt not in ('jpeg', 'png'):
        raise ImageConversionError(f'compressed format must be jpeg or png, got {fmt!r}')
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == 'jpeg' else []
    ok, enc = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png', bgr, params)
    if not ok:
        raise ImageConversionError(f'OpenCV could not encode the image as {fmt}')
    return f'rgb8; {fmt} compressed bgr8', enc.tobytes()
