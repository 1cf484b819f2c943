"""Decode-and-resize-once image cache for training (a uint8 ``.npy`` memmap).

Decoding a JPEG/PNG and resizing it costs more CPU than a small network's training step, so the
trainer decodes every image once, resizes its shorter side to ``resize`` (the exact filter of
``posenet_ros.model.preprocessing``, so training sees what the exported model sees), centre-crops
all images to one common ``(H, W)`` (the smallest resized height/width; identical for a dataset
whose images share one size) and stores them as ``uint8 (N, H, W, 3)`` RGB in
``<cache_dir>/images_<key>.npy``. Later epochs and later runs read it as a memory map.

The key is a hash of the image list (path, size and modification time of every file; the pixels
of in-memory images such as bag frames) and ``resize``, so editing, adding or reordering images
creates a new cache instead of reusing a stale one. Files are written to a temporary name and
renamed when complete, so an interrupted build is never mistaken for a cache.

:class:`LazyImages` has the same interface without a cache (decodes on every access); it exists
for ``cache: false`` and for benchmarking the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from posenet_ros.core.atomic import atomic_path
from posenet_ros.core.errors import DatasetError
from posenet_ros.datasets.types import PoseSample, load_image
from posenet_ros.model.preprocessing import resize_shorter_side_uint8, resized_size

__all__ = ['CachedImages', 'LazyImages', 'build_image_cache', 'cache_key', 'common_size',
           'load_resized']

_CACHE_VERSION = 'posenet_ros-image-cache-v1'
# EXIF orientations that swap width and height (OpenCV's imread applies them when decoding).
_TRANSPOSED = (5, 6, 7, 8)


def _header_size(sample: PoseSample) -> tuple[int, int]:
    """(height, width) of the decoded image, read from the file header when possible."""
    if sample.image is not None:
        return int(sample.image.shape[0]), int(sample.image.shape[1])
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(sample.image_path) as im:
            w, h = im.size
            if im.getexif().get(0x0112) in _TRANSPOSED:
                w, h = h, w
            return int(h), int(w)
    except (OSError, UnidentifiedImageError, ValueError):
        img = load_image(sample)  # raises DatasetError naming the file
        return int(img.shape[0]), int(img.shape[1])


def common_size(samples: Sequence[PoseSample], resize: int) -> tuple[int, int]:
    """Common ``(H, W)`` of the resized images: the smallest resized height and width."""
    if not samples:
        raise DatasetError('no images to cache: the split is empty')
    sizes = [resized_size(*_header_size(s), int(resize)) for s in samples]
    return min(h for h, _ in sizes), min(w for _, w in sizes)


def load_resized(sample: PoseSample, resize: int, size: tuple[int, int]) -> np.ndarray:
    """Decode ``sample``, resize its shorter side to ``resize``, centre-crop to ``size``."""
    img = torch.from_numpy(np.ascontiguousarray(load_image(sample)))
    out = resize_shorter_side_uint8(img, int(resize))
    h, w = size
    if out.shape[0] < h or out.shape[1] < w:
        # The decoded size disagrees with the header (rare): scale up just enough to cover.
        scale = max(h / out.shape[0], w / out.shape[1])
        out = resize_shorter_side_uint8(
            img, int(np.ceil(min(out.shape[0], out.shape[1]) * scale)))
    top = (out.shape[0] - h) // 2
    left = (out.shape[1] - w) // 2
    return out[top:top + h, left:left + w].numpy()


def cache_key(samples: Sequence[PoseSample], resize: int) -> str:
    """Hash of (image list, resize): path, size and mtime of files; pixels of in-memory ones."""
    h = hashlib.sha256(f'{_CACHE_VERSION}|resize={int(resize)}|n={len(samples)}'.encode())
    for s in samples:
        if s.image is not None:
            arr = np.ascontiguousarray(s.image)
            h.update(f'|mem:{arr.shape}:'.encode())
            h.update(hashlib.blake2b(arr.tobytes(), digest_size=16).digest())
        else:
            path = Path(s.image_path).resolve()
            try:
                st = path.stat()
            except OSError:
                raise DatasetError(f'image file {path} does not exist; check the dataset '
                                   'folder') from None
            h.update(f'|{path}:{st.st_size}:{st.st_mtime_ns}'.encode())
    return h.hexdigest()[:20]


class CachedImages:
    """Resized uint8 images ``(N, H, W, 3)`` backed by a memory-mapped ``.npy`` file."""

    def __init__(self, path: Path, array: np.ndarray, resize: int):
        self.path = path
        self.array = array
        self.resize = int(resize)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return int(self.array.shape[1]), int(self.array.shape[2])

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` tensor of the images at ``indices`` (a copy)."""
        return torch.from_numpy(np.ascontiguousarray(self.array[np.asarray(indices)]))


class LazyImages:
    """Same interface as :class:`CachedImages`, decoding and resizing on every access."""

    def __init__(self, samples: Sequence[PoseSample], resize: int,
                 size: tuple[int, int] | None = None):
        self.samples = list(samples)
        self.resize = int(resize)
        self._size = size or common_size(self.samples, self.resize)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return self._size

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` tensor of the images at ``indices`` (decoded now)."""
        return torch.from_numpy(np.stack([
            load_resized(self.samples[int(i)], self.resize, self._size) for i in indices]))


def _open(path: Path, n: int, resize: int) -> CachedImages | None:
    try:
        arr = np.load(path, mmap_mode='r')
    except (OSError, ValueError):
        return None  # truncated or not an .npy: rebuild
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != n or arr.shape[3] != 3:
        return None
    return CachedImages(path, arr, resize)


def build_image_cache(samples: Sequence[PoseSample], resize: int, cache_dir: str | os.PathLike,
                      progress: bool = True, workers: int | None = None,
                      desc: str = 'cache images') -> CachedImages:
    """Return the cache of ``samples`` at ``resize``, building it first if needed.

    ``workers`` threads decode in parallel (OpenCV and torch release the GIL; default: the
    number of CPUs, at most 8). Raises :class:`DatasetError` for unreadable images.
    """
    samples = list(samples)
    resize = int(resize)
    cache_dir = Path(cache_dir)
    key = cache_key(samples, resize)
    path = cache_dir / f'images_{key}.npy'
    if path.is_file():
        cached = _open(path, len(samples), resize)
        if cached is not None:
            return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    h, w = common_size(samples, resize)
    workers = workers or min(8, os.cpu_count() or 1)
    from posenet_ros.core.progress import progress as _progress

    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode='w+', dtype=np.uint8,
                                        shape=(len(samples), h, w, 3))
        with ThreadPoolExecutor(max_workers=workers) as pool, \
                _progress(total=len(samples), desc=desc, unit='img', disable=not progress) as bar:
            chunk = max(16, 4 * workers)  # bounded number of decoded images in flight
            for start in range(0, len(samples), chunk):
                part = samples[start:start + chunk]
                for i, img in enumerate(pool.map(lambda s: load_resized(s, resize, (h, w)),
                                                 part)):
                    out[start + i] = img
                bar.update(len(part))
        out.flush()
        del out
    info = {'images': len(samples), 'resize': resize, 'size': [h, w], 'key': key,
            'first': samples[0].name, 'last': samples[-1].name}
    try:
        path.with_suffix('.json').write_text(json.dumps(info, indent=1))
    except OSError:
        pass  # the sidecar is informational only
    cached = _open(path, len(samples), resize)
    if cached is None:  # pragma: no cover - we just wrote it
        raise DatasetError(f'image cache {path} cannot be read back; delete {cache_dir}')
    return cached
