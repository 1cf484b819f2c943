"""Local features for the scene map and the query: OpenCV SIFT (RootSIFT) or ORB.

Keypoints are pixel coordinates ``(N, 2)`` float32 with pixel centres at integer coordinates
(OpenCV). Descriptors are stored as uint8 ``(N, D)``: SIFT's are integers in 0..255 already
(converted to RootSIFT for matching), ORB's are 32-byte binary strings. Both the map and the
query must use the same kind (the map file records it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from posenet_ros.core.errors import ConfigError

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
_CLAHE: dict = {}

#: Grey-image preparation before detection: ``clahe`` (contrast-limited adaptive histogram
#: equalisation: dark, washed-out or unevenly lit frames get the local contrast of a well
#: exposed one) or ``none`` (the raw grey image).
PREPROCESSING = ('clahe', 'none')
#: Band-pass contrast (grey levels) of a well-exposed frame; SIFT's contrast threshold is scaled
#: by ``min(1, structure / REFERENCE_STRUCTURE)`` when the threshold is relative.
REFERENCE_STRUCTURE = 12.0


@dataclass(frozen=True)
class FeatureSpec:
    """How local features are extracted; the map records it and the query uses the map's.

    ``contrast_threshold``: OpenCV SIFT's (applies to the prepared image); ``relative``: scaled
    down on frames of low contrast (:func:`image_structure`), so a dark frame keeps the
    candidates a bright one has.
    """

    kind: str = 'sift'
    max_features: int = DEFAULT_MAX_FEATURES
    preprocess: str = 'clahe'
    contrast_threshold: float = 0.04
    relative: bool = True
    clahe_clip: float = 2.0

    def __post_init__(self):
        if self.kind not in FEATURE_KINDS:
            raise ConfigError(f'unknown local feature kind {self.kind!r}; choose one of '
                              f'{", ".join(FEATURE_KINDS)}')
        if self.preprocess not in PREPROCESSING:
            raise ConfigError(f'unknown preprocessing {self.preprocess!r}; choose one of '
                              f'{", ".join(PREPROCESSING)}')

    def to_dict(self) -> dict:
        """JSON-friendly form (the map header's ``feature_spec``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpec:
        """Inverse of :meth:`to_dict` (unknown keys are an error: another version's map)."""
        return cls(**d)


def _detector(kind: str, max_features: int, contrast_threshold: float = 0.04):
    key = (kind, max_features, round(contrast_threshold, 5))
    det = _DETECTORS.get(key)
    if det is None:
        if len(_DETECTORS) > 64:
            _DETECTORS.pop(next(iter(_DETECTORS)))
        if kind == 'sift':
            det = cv2.SIFT_create(nfeatures=max_features, contrastThreshold=contrast_threshold)
        elif kind == 'orb':
            det = cv2.ORB_create(nfeatures=max_features, scaleFactor=1.2, nlevels=8,
                                 fastThreshold=10)
        else:
            raise ConfigError(f'unknown local feature kind {kind!r}; choose one of '
                              f'{", ".join(FEATURE_KINDS)}')
        _DETECTORS[key] = det
    return det


def grey_image(rgb: np.ndarray) -> np.ndarray:
    """uint8 grey image of an RGB (or already grey) uint8 frame."""
    img = np.asarray(rgb)
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img


def image_structure(grey: np.ndarray) -> float:
    """Band-pass contrast of a grey frame, in grey levels: what there is to see in it.

    The frame is area-averaged to ~80 px wide (pixel noise averages out), and a Gaussian of
    4 of those pixels is subtracted (smooth gradients, vignetting and exposure go); the
    standard deviation of what is left is texture at the scales local features use. A lens
    cap, a hand over the lens or a smeared lens give ~0-1; a frame at dusk (half brightness,
    noisy) or blurred by motion keeps most of its structure.
    """
    h, w = grey.shape[:2]
    f = max(1, int(round(w / 80)))
    small = cv2.resize(grey, (max(1, w // f), max(1, h // f)),
                       interpolation=cv2.INTER_AREA).astype(np.float32)
    band = small - cv2.GaussianBlur(small, (0, 0), 4.0, borderType=cv2.BORDER_REFLECT)
    return float(band.std())


def prepare(grey: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """The grey image detection runs on (``spec.preprocess``)."""
    if spec.preprocess == 'none':
        return grey
    h, w = grey.shape[:2]
    tiles = (max(1, int(round(w / 80))), max(1, int(round(h / 80))))
    key = (spec.clahe_clip, tiles)
    clahe = _CLAHE.get(key)
    if clahe is None:
        clahe = _CLAHE[key] = cv2.createCLAHE(clipLimit=spec.clahe_clip, tileGridSize=tiles)
    return clahe.apply(grey)


def extract_features(rgb: np.ndarray, kind: str | FeatureSpec = 'sift',
                     max_features: int | None = None) -> LocalFeatures:
    """Detect and describe local features of an RGB (or grey) uint8 image.

    ``kind``: a :class:`FeatureSpec` (the map's) or a kind name (default settings);
    ``max_features`` overrides the spec's.
    """
    spec = kind if isinstance(kind, FeatureSpec) else FeatureSpec(kind=kind)
    n = int(max_features or spec.max_features)
    grey = grey_image(rgb)
    threshold = spec.contrast_threshold
    if spec.relative and spec.kind == 'sift':
        threshold *= min(1.0, max(image_structure(grey), 1.0) / REFERENCE_STRUCTURE)
    kps, desc = _detector(spec.kind, n, threshold).detectAndCompute(prepare(grey, spec), None)
    width = 32 if spec.kind == 'orb' else 128
    if desc is None or not kps:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, width), np.uint8))
    xy = np.array([k.pt for k in kps], dtype=np.float32).reshape(-1, 2)
    if spec.kind == 'sift':  # integer-valued floats in 0..255 (OpenCV saturates them)
        desc = np.clip(np.rint(desc), 0, 255).astype(np.uint8)
    return LocalFeatures(xy, np.ascontiguousarray(desc, dtype=np.uint8))


def matcher_descriptors(desc: np.ndarray, kind: str) -> np.ndarray:
    """Descriptors in the form the matcher compares: RootSIFT float32 rows, or ORB's bytes.

    RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise, square root; rows have unit L2
    norm, so ``|a - b|^2 = 2 - 2 a.b`` and one BLAS matrix product gives every distance
    (several times faster than ``cv2.BFMatcher`` plus Python loops over its matches).
    """
    if kind == 'orb':
        return np.ascontiguousarray(desc, dtype=np.uint8)
    d = np.asarray(desc, dtype=np.float32)
    d = d / np.maximum(d.sum(axis=1, keepdims=True), 1e-6)
    return np.sqrt(d)


def _knn(d1: np.ndarray, d2: np.ndarray, kind: str, k: int):
    """``(idx (N, k), dist (N, k))`` sorted nearest first, and the nearest d1 row of the d2 rows.

    ``back[j]``: the d1 row nearest to d2 row ``j``, for every ``j`` that is some d1 row's
    nearest (-1 for the others; only those are asked for).

    SIFT: one matrix product. ORB: OpenCV's Hamming brute force (popcount on the bytes).
    """
    if kind == 'orb':
        bf = cv2.BFMatcher(cv2.NORM_HAMMING)
        knn = bf.knnMatch(d1, d2, k=k)
        idx = np.zeros((len(d1), k), np.int64)
        dist = np.full((len(d1), k), np.inf, np.float32)
        for i, row in enumerate(knn):
            for j, m in enumerate(row):
                idx[i, j], dist[i, j] = m.trainIdx, m.distance
        back = np.array([m.trainIdx for m in bf.match(d2, d1)], np.int64)
        return idx, dist, back
    sim = d1 @ d2.T  # unit rows: distance = sqrt(2 - 2 sim)
    n2 = sim.shape[1]
    top = np.argpartition(sim, n2 - k, axis=1)[:, n2 - k:]  # no negated copy of the matrix
    top_s = np.take_along_axis(sim, top, axis=1)
    order = np.argsort(-top_s, axis=1, kind='stable')
    top = np.take_along_axis(top, order, axis=1)
    dist = np.sqrt(np.maximum(2.0 - 2.0 * np.take_along_axis(top_s, order, axis=1), 0.0))
    # the mutual check needs the nearest d1 row only of the d2 rows some d1 row chose
    cols = np.unique(top[:, 0])
    back = np.full(n2, -1, np.int64)
    back[cols] = np.argmax(sim[:, cols], axis=0)
    return top, dist, back


def match_descriptors(d1: np.ndarray, d2: np.ndarray, kind: str, ratio: float = 0.8,
                      mutual: bool = True, labels2: np.ndarray | None = None) -> np.ndarray:
    """Indices ``(M, 2)`` of matches ``d1[i] <-> d2[j]`` passing Lowe's ratio test.

    ``d1``/``d2`` come from :func:`matcher_descriptors`. The second-nearest neighbour of the
    ratio test is the nearest one with another label (``labels2``, e.g. the 3D point ids when
    ``d2`` holds several observations of each point; default: every row its own label).
    With ``mutual``, ``d1[i]`` must also be the nearest row of ``d1`` to ``d2[j]``.
    """
    n1, n2 = len(d1), len(d2)
    if n1 < 1 or n2 < 2:
        return np.zeros((0, 2), np.int64)
    k = min(8 if labels2 is not None else 2, n2)
    top, top_d, back = _knn(d1, d2, kind, k)
    best, best_d = top[:, 0], top_d[:, 0]
    if labels2 is None:
        second_d = top_d[:, 1]
    else:
        lab = np.asarray(labels2)[top]
        other = (lab != lab[:, :1]) & np.isfinite(top_d)
        has = other.any(axis=1)
        second_d = np.where(has, top_d[np.arange(n1), other.argmax(axis=1)], np.inf)
    keep = np.isfinite(best_d) & (best_d < ratio * second_d)
    if mutual:
        keep &= back[best] == np.arange(n1)
    i = np.flatnonzero(keep)
    return np.stack([i, best[i]], axis=1).astype(np.int64)
