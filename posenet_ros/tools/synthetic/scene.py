"""The synthetic courtyard's geometry and its texture atlas.

The scene (map frame: x east, y north, z up, metres): a 16 m x 12 m courtyard with a tiled ground
plane at z = 0, four 4 m walls and a handful of axis-aligned crates, open to the sky. Every face
has its own texture (distinct hue, low-frequency colour noise, random shapes, printed face labels),
so every viewpoint is unique. A few magenta discs (``Scene.markers``) are painted on the walls at
known 3D positions for geometric tests.

All faces' textures live in one atlas; ``Scene.affine_u``/``affine_v`` map a 3D point on a face to
its atlas pixel, so rendering is one ``cv2.remap`` once the face hit by each ray is known.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = ['ROOM', 'WALL_HEIGHT', 'MAGENTA', 'Scene', 'make_scene']

ROOM = (-8.0, 8.0, -6.0, 6.0)  # x0, x1, y0, y1
WALL_HEIGHT = 4.0
MAGENTA = (255, 0, 255)

_ATLAS_WIDTH = 2048
# Replicated borders around each texture stop bilinear sampling from bleeding between faces.
_ATLAS_PAD = 2
_MARKER_RADIUS_PX = 0.1 * 64  # 0.1 m at the walls' 64 px/m


@dataclass
class _Rect:
    axis: int  # axis of the face normal
    c: float  # the face's coordinate on that axis
    lo: np.ndarray  # (3,) bounds of the face (lo[axis] == hi[axis] == c)
    hi: np.ndarray
    outward: int  # +1/-1: side of the face it is visible from (along `axis`)


@dataclass
class Scene:
    """Geometry, texture atlas and markers of one seeded courtyard."""

    seed: int
    room_faces: list  # 5 face ids: ground, wall x0, wall x1, wall y0, wall y1
    boxes: list  # list of (lo (3,), hi (3,), [face ids of the 5 visible faces])
    rects: list  # _Rect per face id
    affine_u: np.ndarray  # (F + 1, 4): atlas u = affine_u[f, :3] . p + affine_u[f, 3]
    affine_v: np.ndarray
    atlas: np.ndarray  # (H, W, 3) uint8 RGB
    sky: np.ndarray  # (256, 3) float32 colour by elevation bin
    markers: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (M, 3) map points
    _rays: dict = field(default_factory=dict, repr=False)


class _Faces:
    """Face rectangles and their texture resolution (pixels per metre), indexed by face id."""

    def __init__(self):
        self.rects: list[_Rect] = []
        self.ppms: list[float] = []

    def add(self, axis, c, lo, hi, outward, ppm) -> int:
        lo, hi = np.array(lo, float), np.array(hi, float)
        lo[axis] = hi[axis] = c
        self.rects.append(_Rect(axis, c, lo, hi, outward))
        self.ppms.append(ppm)
        return len(self.rects) - 1


def _room(faces: _Faces) -> list[int]:
    """Ground and the four walls, each visible from inside the courtyard."""
    x0, x1, y0, y1 = ROOM
    hw = WALL_HEIGHT
    return [
        faces.add(2, 0.0, (x0, y0, 0), (x1, y1, 0), +1, 64.0),  # ground, seen from above
        faces.add(0, x0, (x0, y0, 0), (x0, y1, hw), +1, 64.0),  # wall x0 seen from +x (inside)
        faces.add(0, x1, (x1, y0, 0), (x1, y1, hw), -1, 64.0),
        faces.add(1, y0, (x0, y0, 0), (x1, y0, hw), +1, 64.0),
        faces.add(1, y1, (x0, y1, 0), (x1, y1, hw), -1, 64.0),
    ]


def _crates(faces: _Faces, rng: np.random.Generator, n_boxes: int) -> list:
    """Crates: some near the centre, some along the walls, none on a camera's path.

    The centre ones sit inside every trajectory loop and the others outside, so no camera ever
    sits inside a crate.
    """
    boxes = []
    centres = [(rng.uniform(-2.0, 2.0), rng.uniform(-1.2, 1.2)) for _ in range(n_boxes // 2)]
    for _ in range(n_boxes - len(centres)):
        if rng.random() < 0.5:
            centres.append((rng.uniform(-6.5, 6.5), rng.choice([-1, 1]) * 5.4))
        else:
            centres.append((rng.choice([-1, 1]) * 7.3, rng.uniform(-4.5, 4.5)))
    for cx, cy in centres:
        half = rng.uniform(0.25, 0.5, size=2)
        top = rng.uniform(0.5, 2.6)
        lo = np.array([cx - half[0], cy - half[1], 0.0])
        hi = np.array([cx + half[0], cy + half[1], top])
        ids = [faces.add(2, top, lo, hi, +1, 128.0)]
        for axis in (0, 1):
            ids.append(faces.add(axis, lo[axis], lo, hi, -1, 128.0))
            ids.append(faces.add(axis, hi[axis], lo, hi, +1, 128.0))
        boxes.append((lo, hi, ids))
    return boxes


def _face_uv_axes(rect: _Rect):
    """World directions of texture u (right) and v (down) as seen by a viewer facing the face."""
    z = np.array([0.0, 0.0, 1.0])
    if rect.axis == 2:  # horizontal faces: u = +x, v = -y (map seen from above)
        return np.array([1.0, 0.0, 0.0]), np.array([0.0, -1.0, 0.0])
    view = np.zeros(3)
    view[rect.axis] = -rect.outward  # the viewer looks against the visible side's normal
    return np.cross(view, z), -z


def _texture(rng: np.random.Generator, h: int, w: int, hue: float, label: str,
             ppm: float, tiles: bool) -> np.ndarray:
    """Distinct, high-frequency, seeded texture of one face (RGB uint8)."""
    base = np.array(colorsys.hsv_to_rgb(hue, 0.55, 0.75)) * 255.0
    low = rng.normal(0.0, 38.0, size=(max(2, h // 24), max(2, w // 24), 3)).astype(np.float32)
    img = np.clip(base + cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC), 0, 255)
    img = img.astype(np.uint8)
    n_shapes = int(w * h / 900) + 6
    for _ in range(n_shapes):
        colour = tuple(int(v) for v in rng.integers(25, 235, size=3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = int(rng.integers(3, max(4, int(0.35 * ppm))))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + size, y + int(rng.integers(2, size + 2))), colour, -1)
        elif kind == 1:
            cv2.circle(img, (x, y), size // 2 + 1, colour, -1)
        else:
            cv2.line(img, (x, y), (x + int(rng.integers(-size, size)),
                                   y + int(rng.integers(-size, size))), colour, 2)
    if tiles:  # ground: a 1 m tile grid
        step = int(round(ppm))
        img[::step, :] = (img[::step, :] * 0.4).astype(np.uint8)
        img[:, ::step] = (img[:, ::step] * 0.4).astype(np.uint8)
    scale = max(0.4, ppm / 110.0)
    for k in range(max(1, (w * h) // (int(ppm) * int(ppm) * 3))):
        pos = (int(rng.integers(0, max(1, w - 60))), int(rng.integers(12, max(13, h - 4))))
        cv2.putText(img, f'{label}{k}', pos, cv2.FONT_HERSHEY_SIMPLEX, scale, (15, 15, 15), 2)
    # Reserve magenta for the markers: nudge any look-alike pixel away from it.
    rgb = img.astype(np.int16)
    look = (rgb[..., 0] > 180) & (rgb[..., 1] < 90) & (rgb[..., 2] > 180)
    img[look, 1] = 140
    return img


def _face_textures(faces: _Faces, rng: np.random.Generator, ground: int):
    """One texture per face, sized by its extent and ppm; also (len_u, len_v, u axis, v axis)."""
    textures, sizes = [], []
    for i, (rect, ppm) in enumerate(zip(faces.rects, faces.ppms)):
        ua, va = _face_uv_axes(rect)
        ext = rect.hi - rect.lo
        len_u, len_v = float(abs(ua @ ext)), float(abs(va @ ext))
        tw, th = max(8, round(len_u * ppm)), max(8, round(len_v * ppm))
        hue = (i * 0.618034 + rng.random() * 0.1) % 1.0
        textures.append(_texture(rng, th, tw, hue, f'F{i}-', ppm, tiles=(i == ground)))
        sizes.append((len_u, len_v, ua, va))
    return textures, sizes


def _shelf_pack(textures: list[np.ndarray]) -> tuple[list, int]:
    """Atlas offsets (x, y) of each texture, tallest first in rows; and the atlas height."""
    pad = _ATLAS_PAD
    order = sorted(range(len(textures)), key=lambda i: -textures[i].shape[0])
    offsets = [None] * len(textures)
    cur_x = cur_y = shelf_h = 0
    for i in order:
        th, tw = textures[i].shape[:2]
        if cur_x + tw + 2 * pad > _ATLAS_WIDTH:
            cur_x, cur_y, shelf_h = 0, cur_y + shelf_h, 0
        offsets[i] = (cur_x + pad, cur_y + pad)
        cur_x += tw + 2 * pad
        shelf_h = max(shelf_h, th + 2 * pad)
    return offsets, cur_y + shelf_h


def _atlas_affines(rects: list[_Rect], textures, sizes, offsets):
    """Per face, the affine maps from a 3D point on it to atlas u and v (last row: the sky)."""
    n_faces = len(rects)
    affine_u = np.zeros((n_faces + 1, 4), np.float32)
    affine_v = np.zeros((n_faces + 1, 4), np.float32)
    for i, rect in enumerate(rects):
        th, tw = textures[i].shape[:2]
        len_u, len_v, ua, va = sizes[i]
        centre = (rect.lo + rect.hi) / 2
        corner = centre - ua * len_u / 2 - va * len_v / 2  # 3D point at texture (0, 0) corner
        cu, cv = ua * tw / len_u, va * th / len_v
        ox, oy = offsets[i]
        # Texel centres at integer coordinates: texture edge (0) is texel coordinate -0.5.
        affine_u[i] = [*cu, ox - 0.5 - cu @ corner]
        affine_v[i] = [*cv, oy - 0.5 - cv @ corner]
    return affine_u, affine_v


def _place_markers(rects: list[_Rect], wall_ids: list[int], rng: np.random.Generator,
                   n_markers: int) -> list:
    """(face id, 3D point) of markers spread over the four walls."""
    markers = []
    for m in range(n_markers):
        rect = rects[wall_ids[m % 4]]
        p = rect.lo + (rect.hi - rect.lo) * rng.uniform(0.1, 0.9, size=3)
        p[2] = rng.uniform(0.6, 2.8)
        p[rect.axis] = rect.c
        markers.append((wall_ids[m % 4], p))
    return markers


def _paint_atlas(textures, offsets, height, affine_u, affine_v, markers) -> np.ndarray:
    """Draw the markers on their textures (never shaded), then copy each texture into the atlas."""
    pad = _ATLAS_PAD
    atlas = np.zeros((height, _ATLAS_WIDTH, 3), np.uint8)
    for i, tex in enumerate(textures):
        ox, oy = offsets[i]
        for fid, p in markers:
            if fid == i:
                u = affine_u[i, :3] @ p + affine_u[i, 3] - ox
                v = affine_v[i, :3] @ p + affine_v[i, 3] - oy
                # sub-pixel precision: coordinates in 1/16 px (shift=4)
                cv2.circle(tex, (int(round(u * 16)), int(round(v * 16))),
                           int(_MARKER_RADIUS_PX * 16), MAGENTA, -1, lineType=cv2.LINE_8,
                           shift=4)
        th, tw = tex.shape[:2]
        atlas[oy - pad:oy + th + pad, ox - pad:ox + tw + pad] = cv2.copyMakeBorder(
            tex, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    return atlas


def _sky() -> np.ndarray:
    """(256, 3) float32 sky colour from the horizon (bin 0) to the zenith (bin 255)."""
    elev = np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None]
    sky = ((1 - elev) * np.array([205, 222, 240], np.float32)
           + elev * np.array([70, 120, 200], np.float32))
    return sky.astype(np.float32)


def make_scene(seed: int = 0, n_boxes: int = 6, n_markers: int = 8) -> Scene:
    """Build the seeded courtyard: faces, textures packed into one atlas, and wall markers."""
    # One generator, drawn in a fixed order (crates, textures, markers): a seed is one scene.
    rng = np.random.default_rng(seed)
    faces = _Faces()
    room_faces = _room(faces)
    boxes = _crates(faces, rng, n_boxes)
    textures, sizes = _face_textures(faces, rng, ground=room_faces[0])
    offsets, atlas_height = _shelf_pack(textures)
    affine_u, affine_v = _atlas_affines(faces.rects, textures, sizes, offsets)
    markers = _place_markers(faces.rects, room_faces[1:], rng, n_markers)
    atlas = _paint_atlas(textures, offsets, atlas_height, affine_u, affine_v, markers)
    return Scene(seed=seed, room_faces=room_faces, boxes=boxes, rects=faces.rects,
                 affine_u=affine_u, affine_v=affine_v, atlas=atlas, sky=_sky(),
                 markers=np.array([p for _, p in markers]))
