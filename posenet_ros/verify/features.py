"""Local features for the scene map and the query: OpenCV SIFT (RootSIFT) or ORB.

Keypoints are pixel coordinates ``(N, 2)`` float32 with pixel centres at integer coordinates
(OpenCV). Descriptors are stored as uint8 ``(N, D)``: SIFT's are integers in 0..255 already
(converted to RootSIFT for matching), ORB's are 32-byte binary strings. Both the map and the
query must use the same kind (the map file records it).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from posenet_ros.errors import ConfigError

__all__ = ['FEATURE_KINDS', 'LocalFeatures', 'extract_features', 'match_descriptors',
           'matcher_descriptors']

#: ``sift``: OpenCV SIFT, RootSIFT matching (default, accurate). ``orb``: OpenCV ORB, Hamming
#: matching (several times faster to extract, fewer verified frames).
FEATURE_KINDS = ('sift', 'orb')
DEFAULT_MAX_FEATURES = 2000


@dataclass
class LocalFeatures:
    """Keypoints ``xy`` (N, 2) float32 pixels and descriptors ``desc`` (N, D) uint8."""

    xy: np.ndarray
    desc: np.ndarray

    def __len__(self) -> int:
        return len(self.xy)


_DETECTORS: dict = {}


def _detector(kind: str, max_features: int):
    key = (kind, max_features)
    det = _DETECTORS.get(key)
    if det is None:
        if kind == 'sift':
            det = cv2.SIFT_create(nfeatures=max_features)
        elif kind == 'orb':
            det = cv2.ORB_create(nfeatures=max_features, scaleFactor=1.2, nlevels=8,
                                 fastThreshold=10)
        else:
            raise ConfigError(f'unknown local feature kind {kind!r}; choose one of '
                              f'{", ".join(FEATURE_KINDS)}')
        _DETECTORS[key] = det
    return det


def extract_features(rgb: np.ndarray, kind: str = 'sift',
                     max_features: int = DEFAULT_MAX_FEATURES) -> LocalFeatures:
    """Detect and describe local features of an RGB (or grey) uint8 image."""
    img = np.asarray(rgb)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    kps, desc = _detector(kind, int(max_features)).detectAndCompute(grey, None)
    width = 32 if kind == 'orb' else 128
    if desc is None or not kps:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, width), np.uint8))
    xy = np.array([k.pt for k in kps], dtype=np.float32).reshape(-1, 2)
    if kind == 'sift':  # integer-valued floats in 0..255 (OpenCV saturates them)
        desc = np.clip(np.rint(desc), 0, 255).astype(np.uint8)
    return LocalFeatures(xy, np.ascontiguousarray(desc, dtype=np.uint8))


def matcher_descriptors(desc: np.ndarray, kind: str) -> np.ndarray:
    """Descriptors in the form the matcher compares: RootSIFT float32 or raw ORB bytes.

    RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise, then square root; L2 distances of
    RootSIFT compare like the Hellinger kernel on SIFT and match better.
    """
    if kind == 'orb':
        return np.ascontiguousarray(desc, dtype=np.uint8)
    d = np.asarray(desc, dtype=np.float32)
    d = d / np.maximum(d.sum(axis=1, keepdims=True), 1e-6)
    return np.sqrt(d)


def _matcher(kind: str):
    return cv2.BFMatcher(cv2.NORM_HAMMING if kind == 'orb' else cv2.NORM_L2)


def match_descriptors(d1: np.ndarray, d2: np.ndarray, kind: str, ratio: float = 0.8,
                      mutual: bool = True) -> np.ndarray:
    """Indices ``(M, 2)`` of matches ``d1[i] <-> d2[j]`` passing Lowe's ratio test.

    ``d1``/``d2`` come from :func:`matcher_descriptors`. With ``mutual`` the match must also be
    the ratio-tested nearest neighbour in the other direction.
    """
    if len(d1) < 2 or len(d2) < 2:
        return np.zeros((0, 2), np.int64)
    bf = _matcher(kind)

    def one_way(a, b):
        knn = bf.knnMatch(a, b, k=2)
        best = np.full(len(a), -1, np.int64)
        for m in knn:
            if len(m) == 2 and m[0].distance < ratio * m[1].distance:
                best[m[0].queryIdx] = m[0].trainIdx
        return best

    fwd = one_way(d1, d2)
    i = np.flatnonzero(fwd >= 0)
    if mutual and len(i):
        bwd = one_way(d2, d1)
        i = i[bwd[fwd[i]] == i]
    return np.stack([i, fwd[i]], axis=1) if len(i) else np.zeros((0, 2), np.int64)
