"""A procedurally textured 3D courtyard rendered from known poses (dataset folder + rosbag2).

The scene (map frame: x east, y north, z up, metres): a 16 m x 12 m courtyard with a tiled ground
plane at z = 0, four 4 m walls and a handful of axis-aligned crates, open to the sky. Every face
has its own texture (distinct hue, low-frequency colour noise, random shapes, printed face labels),
so every viewpoint is unique. A few magenta discs (``Scene.markers``) are painted on the walls at
known 3D positions for geometric tests.

Rendering is ray casting with a z-buffer (numpy, float32) against the room box and the crates
(screen-space bounding boxes limit each crate to the pixels it can cover), then one ``cv2.remap``
from a texture atlas. Cameras follow the project's convention: ``position`` is the camera centre in
the map frame and ``quaternion`` (wxyz) the camera-to-map rotation of the optical frame (z forward,
x right, y down); pixel centres are at integer coordinates (OpenCV).

``posenet-ros synth --out DIR [--bag]`` writes a manifest dataset (``DIR/dataset``) and optionally
a rosbag2 of the test trajectory (``DIR/bag``).
"""

from __future__ import annotations

import argparse
import colorsys
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from posenet_ros.core.errors import ConfigError
from posenet_ros.core.geometry import (
    compose,
    invert,
    matrix_to_pose,
    matrix_to_quat,
    pose_to_matrix,
    wxyz_to_xyzw,
)
from posenet_ros.core.ros_conversions import ns_to_stamp
from posenet_ros.datasets.manifest import write_manifest
from posenet_ros.datasets.types import PoseSample, intrinsics_matrix

__all__ = [
    'SceneConfig', 'Scene', 'make_scene', 'render', 'trajectory', 'write_dataset', 'write_bag',
    'RosbagWriter', 'camera_matrix', 'look_rotation', 'T_BASE_CAM', 'T_BASE_CAMLINK',
    'T_CAMLINK_OPTICAL', 't_map_odom', 'main',
]

ROOM = (-8.0, 8.0, -6.0, 6.0)  # x0, x1, y0, y1
WALL_HEIGHT = 4.0
MAGENTA = (255, 0, 255)

# The synthetic rig's camera mount (REP 103 bodies: x forward, y left, z up). camera_link sits
# 0.2 m ahead of and 1.0 m above base_link, pitched down 10 deg (a positive rotation about y
# turns x towards -z). The optical frame (REP 103: z forward, x right, y down) is camera_link
# rotated by the quaternion xyzw (-0.5, 0.5, -0.5, 0.5): optical z = link x, optical x =
# -link y, optical y = -link z. docs/node.md ("Camera extrinsic") works this example through.
_PITCH = math.radians(10.0)
T_BASE_CAMLINK = np.array([[math.cos(_PITCH), 0.0, math.sin(_PITCH), 0.20],
                           [0.0, 1.0, 0.0, 0.0],
                           [-math.sin(_PITCH), 0.0, math.cos(_PITCH), 1.00],
                           [0.0, 0.0, 0.0, 1.0]])
T_CAMLINK_OPTICAL = np.array([[0.0, 0.0, 1.0, 0.0],
                              [-1.0, 0.0, 0.0, 0.0],
                              [0.0, -1.0, 0.0, 0.0],
                              [0.0, 0.0, 0.0, 1.0]])
T_BASE_CAM = T_BASE_CAMLINK @ T_CAMLINK_OPTICAL  # base_link -> camera_optical


def t_map_odom(t: float) -> np.ndarray:
    """The synthetic odometry's error: ``T_map_odom`` ``t`` seconds into a bag.

    Starts at 0.4 m, -0.25 m, 3 deg and drifts 1 cm/s, 0.5 cm/s and 0.2 deg/s: not the identity,
    and slow against the frame rate, like wheel odometry's slip.
    """
    yaw = math.radians(3.0 + 0.2 * t)
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0, 0.40 + 0.010 * t],
                     [s, c, 0.0, -0.25 + 0.005 * t],
                     [0.0, 0.0, 1.0, 0.0],
                     [0.0, 0.0, 0.0, 1.0]])


@dataclass
class SceneConfig:
    """Everything that defines a synthetic dataset (stored in its dataset.json)."""

    seed: int = 0
    width: int = 320
    height: int = 240
    fx: float = 277.0  # ~60 deg horizontal field of view at 320 px
    fy: float | None = None  # None: same as fx
    n_train: int = 300
    n_test: int = 100
    rate: float = 30.0  # Hz, header stamps of consecutive frames
    start_time: float = 1_700_000_000.0  # seconds, stamp of the first frame
    map_frame: str = 'map'
    camera_frame: str = 'camera_optical'
    base_frame: str = 'base_link'
    odom_frame: str = 'odom'
    camera_link_frame: str = 'camera_link'

    def K(self) -> np.ndarray:  # noqa: N802 (K is the standard name of the intrinsics)
        """Intrinsics with the principal point at the image centre."""
        return camera_matrix(self.width, self.height, self.fx, self.fy)


def camera_matrix(width: int, height: int, fx: float, fy: float | None = None) -> np.ndarray:
    """K with (cx, cy) at the image centre in pixel-centre coordinates."""
    return intrinsics_matrix(fx, fx if fy is None else fy, (width - 1) / 2.0, (height - 1) / 2.0)


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


def make_scene(seed: int = 0, n_boxes: int = 6, n_markers: int = 8) -> Scene:
    """Build the seeded courtyard: faces, textures packed into one atlas, and wall markers."""
    rng = np.random.default_rng(seed)
    x0, x1, y0, y1 = ROOM
    rects: list[_Rect] = []
    ppms: list[float] = []

    def add(axis, c, lo, hi, outward, ppm):
        lo, hi = np.array(lo, float), np.array(hi, float)
        lo[axis] = hi[axis] = c
        rects.append(_Rect(axis, c, lo, hi, outward))
        ppms.append(ppm)
        return len(rects) - 1

    hw = WALL_HEIGHT
    room_faces = [
        add(2, 0.0, (x0, y0, 0), (x1, y1, 0), +1, 64.0),  # ground, seen from above
        add(0, x0, (x0, y0, 0), (x0, y1, hw), +1, 64.0),  # wall x0 seen from +x (inside)
        add(0, x1, (x1, y0, 0), (x1, y1, hw), -1, 64.0),
        add(1, y0, (x0, y0, 0), (x1, y0, hw), +1, 64.0),
        add(1, y1, (x0, y1, 0), (x1, y1, hw), -1, 64.0),
    ]
    # Crates: some near the centre (inside every trajectory loop), some along the walls
    # (outside every loop), so no camera ever sits inside one.
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
        ids = [add(2, top, lo, hi, +1, 128.0)]
        for axis in (0, 1):
            ids.append(add(axis, lo[axis], lo, hi, -1, 128.0))
            ids.append(add(axis, hi[axis], lo, hi, +1, 128.0))
        boxes.append((lo, hi, ids))

    # Textures, packed into one atlas with shelf packing; 2 px replicated borders stop bilinear
    # sampling from bleeding between faces.
    pad, atlas_w = 2, 2048
    textures, sizes = [], []
    for i, (rect, ppm) in enumerate(zip(rects, ppms)):
        ua, va = _face_uv_axes(rect)
        ext = rect.hi - rect.lo
        len_u, len_v = float(abs(ua @ ext)), float(abs(va @ ext))
        tw, th = max(8, round(len_u * ppm)), max(8, round(len_v * ppm))
        hue = (i * 0.618034 + rng.random() * 0.1) % 1.0
        textures.append(_texture(rng, th, tw, hue, f'F{i}-', ppm, tiles=(i == room_faces[0])))
        sizes.append((len_u, len_v, ua, va))
    order = sorted(range(len(textures)), key=lambda i: -textures[i].shape[0])
    offsets = [None] * len(textures)
    cur_x = cur_y = shelf_h = 0
    for i in order:
        th, tw = textures[i].shape[:2]
        if cur_x + tw + 2 * pad > atlas_w:
            cur_x, cur_y, shelf_h = 0, cur_y + shelf_h, 0
        offsets[i] = (cur_x + pad, cur_y + pad)
        cur_x += tw + 2 * pad
        shelf_h = max(shelf_h, th + 2 * pad)
    atlas = np.zeros((cur_y + shelf_h, atlas_w, 3), np.uint8)

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

    # Markers on the walls at known 3D points (drawn after the textures, never shaded).
    markers = []
    wall_ids = room_faces[1:]
    for m in range(n_markers):
        rect = rects[wall_ids[m % 4]]
        p = rect.lo + (rect.hi - rect.lo) * rng.uniform(0.1, 0.9, size=3)
        p[2] = rng.uniform(0.6, 2.8)
        p[rect.axis] = rect.c
        markers.append((wall_ids[m % 4], p))
    for i, tex in enumerate(textures):
        ox, oy = offsets[i]
        for fid, p in markers:
            if fid == i:
                u = affine_u[i, :3] @ p + affine_u[i, 3] - ox
                v = affine_v[i, :3] @ p + affine_v[i, 3] - oy
                # radius 0.1 m at 64 px/m; draw with sub-pixel precision (shift=4)
                cv2.circle(tex, (int(round(u * 16)), int(round(v * 16))), int(0.1 * 64 * 16),
                           MAGENTA, -1, lineType=cv2.LINE_8, shift=4)
        th, tw = tex.shape[:2]
        atlas[oy - pad:oy + th + pad, ox - pad:ox + tw + pad] = cv2.copyMakeBorder(
            tex, pad, pad, pad, pad, cv2.BORDER_REPLICATE)

    elev = np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None]
    sky = ((1 - elev) * np.array([205, 222, 240], np.float32)
           + elev * np.array([70, 120, 200], np.float32))
    return Scene(seed=seed, room_faces=room_faces, boxes=boxes, rects=rects, affine_u=affine_u,
                 affine_v=affine_v, atlas=atlas, sky=sky.astype(np.float32),
                 markers=np.array([p for _, p in markers]))


def _camera_rays(scene: Scene, K: np.ndarray, width: int, height: int) -> np.ndarray:
    key = (width, height, *np.round(np.asarray(K, float).ravel(), 6))
    rays = scene._rays.get(key)
    if rays is None:
        u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
        pix = np.stack([u, v, np.ones_like(u)], axis=-1)
        rays = (pix @ np.linalg.inv(np.asarray(K, float)).T).astype(np.float32)  # (H, W, 3)
        scene._rays[key] = rays
    return rays


def _box_roi(lo, hi, R_cam_map, t_cam_map, K, width, height):
    """Pixel bounding box (r0, r1, c0, c1) a crate can cover, or None if not visible."""
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                        for z in (lo[2], hi[2])])
    pc = corners @ R_cam_map.T + t_cam_map
    if np.all(pc[:, 2] <= 0.0):
        return None
    if np.any(pc[:, 2] <= 0.05):  # straddles the camera plane: test the whole frame
        return 0, height, 0, width
    uv = (pc @ np.asarray(K).T)[:, :2] / pc[:, 2:3]
    c0, r0 = np.floor(uv.min(axis=0)).astype(int) - 1
    c1, r1 = np.ceil(uv.max(axis=0)).astype(int) + 2
    c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, width), min(r1, height)
    if c0 >= c1 or r0 >= r1:
        return None
    return r0, r1, c0, c1


def render(scene: Scene, position, quaternion_wxyz, K, width: int, height: int) -> np.ndarray:
    """Render the scene seen by a camera with pose ``T_map_cam`` -> ``(H, W, 3)`` uint8 RGB."""
    T = pose_to_matrix(position, quaternion_wxyz)
    R = T[:3, :3]
    o = T[:3, 3].astype(np.float32)
    rays = _camera_rays(scene, K, width, height)
    d = rays @ R.T.astype(np.float32)  # ray directions in the map frame, (H, W, 3)
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
        inv = [1.0 / dx, 1.0 / dy, 1.0 / dz]
        x0, x1, y0, y1 = ROOM
        g, wx0, wx1, wy0, wy1 = scene.room_faces
        n_faces = len(scene.rects)
        # The courtyard is convex and the camera is inside: the nearest exit plane per axis.
        tx = np.where(dx > 0, (x1 - o[0]) * inv[0], (x0 - o[0]) * inv[0])
        ty = np.where(dy > 0, (y1 - o[1]) * inv[1], (y0 - o[1]) * inv[1])
        tz = np.where(dz < 0, (0.0 - o[2]) * inv[2], (WALL_HEIGHT - o[2]) * inv[2])
        fid = np.where(dz < 0, g, n_faces).astype(np.int32)  # n_faces = sky
        zbuf = tz.astype(np.float32)
        sel = tx < zbuf
        np.copyto(fid, np.where(dx > 0, wx1, wx0).astype(np.int32), where=sel)
        np.copyto(zbuf, tx, where=sel)
        sel = ty < zbuf
        np.copyto(fid, np.where(dy > 0, wy1, wy0).astype(np.int32), where=sel)
        np.copyto(zbuf, ty, where=sel)
        fid[~np.isfinite(zbuf)] = n_faces

        R_cm = R.T
        t_cm = -R_cm @ T[:3, 3]
        for lo, hi, ids in scene.boxes:
            roi = _box_roi(lo, hi, R_cm, t_cm, K, width, height)
            if roi is None:
                continue
            r0, r1, c0, c1 = roi
            zb, fb, db = zbuf[r0:r1, c0:c1], fid[r0:r1, c0:c1], d[r0:r1, c0:c1]
            for face_id in ids:
                rect = scene.rects[face_id]
                k = rect.axis
                if (o[k] - rect.c) * rect.outward <= 0:  # back face
                    continue
                a, b = [ax for ax in range(3) if ax != k]
                t = (rect.c - o[k]) / db[..., k]
                ha = o[a] + t * db[..., a]
                hb = o[b] + t * db[..., b]
                m = ((t > 1e-4) & (t < zb) & (ha >= rect.lo[a]) & (ha <= rect.hi[a])
                     & (hb >= rect.lo[b]) & (hb <= rect.hi[b]))
                np.copyto(zb, t, where=m)
                fb[m] = face_id
    sky = fid == n_faces
    zbuf[sky] = 0.0
    p = d * zbuf[..., None] + o  # hit points (H, W, 3)
    au, av = scene.affine_u[fid], scene.affine_v[fid]
    mu = np.einsum('hwk,hwk->hw', p, au[..., :3]) + au[..., 3]
    mv = np.einsum('hwk,hwk->hw', p, av[..., :3]) + av[..., 3]
    img = cv2.remap(scene.atlas, mu.astype(np.float32), mv.astype(np.float32), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    if np.any(sky):
        dn = d[sky]
        elev = dn[:, 2] / np.linalg.norm(dn, axis=1)
        img[sky] = scene.sky[np.clip((elev * 255).astype(np.int32), 0, 255)].astype(np.uint8)
    return img


def look_rotation(yaw: float, pitch: float, roll: float = 0.0) -> np.ndarray:
    """R_map_cam of an optical camera looking along (yaw, pitch) in a z-up map (radians)."""
    f = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch),
                  math.sin(pitch)])
    right = np.cross(f, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(f, right)
    R = np.stack([right, down, f], axis=1)  # columns: optical x (right), y (down), z (forward)
    c, s = math.cos(roll), math.sin(roll)
    return R @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# Per lap: (height m, ellipse scale, heading offset deg, sweep phase). Test laps sit between the
# training laps in height, radius and heading, and are sampled at other phases.
_LAPS = {
    'train': [(1.30, 1.00, 0.0, 0.0), (1.55, 0.82, -55.0, 1.0), (1.80, 1.12, 50.0, 2.0)],
    'test': [(1.42, 0.92, -25.0, 0.5), (1.68, 1.06, 25.0, 1.5)],
}
_ELLIPSE = (5.0, 3.6)


def trajectory(kind: str = 'train', n: int = 300, seed: int = 0) -> list[tuple[np.ndarray,
                                                                               np.ndarray]]:
    """``n`` camera poses (position, wxyz) along the train or test laps of the courtyard."""
    if kind not in _LAPS:
        raise ConfigError(f"trajectory kind must be 'train' or 'test', got {kind!r}")
    if n < 1:
        raise ConfigError(f'trajectory needs n >= 1 frames, got {n}')
    laps = _LAPS[kind]
    rng = np.random.default_rng(seed + (0 if kind == 'train' else 7919))
    phase0 = rng.uniform(0, 2 * math.pi)
    poses = []
    for i in range(n):
        s = (i + (0.5 if kind == 'test' else 0.0)) / n * len(laps)
        lap = min(int(s), len(laps) - 1)
        theta = phase0 + 2 * math.pi * (s - lap) + lap * 0.9
        h, scale, offset, ph = laps[lap]
        a, b = _ELLIPSE[0] * scale, _ELLIPSE[1] * scale
        pos = np.array([a * math.cos(theta), b * math.sin(theta),
                        h + 0.08 * math.sin(3 * theta + ph)])
        tangent = math.atan2(b * math.cos(theta), -a * math.sin(theta))
        yaw = tangent + math.radians(offset + 30.0 * math.sin(2 * theta + ph))
        pitch = math.radians(-6.0 + 5.0 * math.sin(3 * theta + ph))
        roll = math.radians(3.0 * math.sin(5 * theta + ph))
        poses.append((pos, matrix_to_quat(look_rotation(yaw, pitch, roll))))
    return poses


def _iter_frames(cfg: SceneConfig, which: str):
    """(split, index, position, quaternion, stamp) for the requested trajectories."""
    kinds = ['train', 'test'] if which == 'all' else [which]
    counts = {'train': cfg.n_train, 'test': cfg.n_test}
    k = 0
    for kind in kinds:
        for i, (p, q) in enumerate(trajectory(kind, counts[kind], cfg.seed)):
            yield kind, i, p, q, cfg.start_time + k / cfg.rate
            k += 1


def _progress(iterable, total, desc, show):
    from posenet_ros.core.progress import progress

    return progress(iterable, total=total, desc=desc, unit='frame', disable=not show)


def write_dataset(out_dir, cfg: SceneConfig | None = None, progress: bool = True) -> Path:
    """Render train + test frames into a manifest dataset folder (PNG images, intrinsics)."""
    cfg = cfg or SceneConfig()
    out_dir = Path(out_dir)
    (out_dir / 'images').mkdir(parents=True, exist_ok=True)
    scene = make_scene(cfg.seed)
    K = cfg.K()
    samples = []
    total = cfg.n_train + cfg.n_test
    for split, i, p, q, stamp in _progress(_iter_frames(cfg, 'all'), total, 'render', progress):
        path = out_dir / 'images' / f'{split}_{i:05d}.png'
        img = render(scene, p, q, K, cfg.width, cfg.height)
        if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
            raise ConfigError(f'cannot write {path}; check that the folder is writable')
        samples.append(PoseSample(position=p, quaternion=q, split=split, image_path=path,
                                  stamp=stamp, intrinsics=K, name=path.name))
    info = {'format': 'posenet_ros-manifest', 'version': 1, 'source': 'synthetic',
            'frames': {'map_frame': cfg.map_frame, 'camera_frame': cfg.camera_frame},
            'synthetic': asdict(cfg)}
    write_manifest(out_dir, samples, info=info)
    return out_dir


class RosbagWriter:
    """Thin helper over ``rosbags`` to write camera, pose and TF messages (Humble+ types).

    Stamps are float seconds; each message's record time equals its header stamp.
    """

    def __init__(self, path, storage: str = 'sqlite3'):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        plugins = {'sqlite3': StoragePlugin.SQLITE3, 'mcap': StoragePlugin.MCAP}
        if storage not in plugins:
            raise ConfigError(f"storage must be 'sqlite3' or 'mcap', got {storage!r}")
        self.ts = get_typestore(Stores.ROS2_JAZZY)
        self.writer = Writer(Path(path), version=9, storage_plugin=plugins[storage])
        self.writer.open()
        self.conns: dict[str, object] = {}

    def _conn(self, topic: str, msgtype: str):
        if topic not in self.conns:
            self.conns[topic] = self.writer.add_connection(topic, msgtype, typestore=self.ts)
        return self.conns[topic]

    def _header(self, stamp: float, frame_id: str):
        T = self.ts.types
        sec, nanosec = ns_to_stamp(round(stamp * 1e9))
        return T['std_msgs/msg/Header'](
            stamp=T['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec), frame_id=frame_id)

    def write(self, topic: str, msgtype: str, msg, stamp: float) -> None:
        """Serialise ``msg`` and write it with record time ``stamp`` (s)."""
        self.writer.write(self._conn(topic, msgtype), int(round(stamp * 1e9)),
                          self.ts.serialize_cdr(msg, msgtype))

    def image(self, topic, stamp, rgb, frame_id='camera_optical', encoding='rgb8',
              row_padding=0):
        """sensor_msgs/Image from an RGB array in any supported encoding (with row padding)."""
        from posenet_ros.core.image_conversion import rgb_to_image_fields

        f = rgb_to_image_fields(rgb, encoding, row_padding=row_padding)
        msg = self.ts.types['sensor_msgs/msg/Image'](
            header=self._header(stamp, frame_id), height=f['height'], width=f['width'],
            encoding=f['encoding'], is_bigendian=int(f['is_bigendian']), step=f['step'],
            data=np.frombuffer(f['data'], np.uint8))
        self.write(topic, 'sensor_msgs/msg/Image', msg, stamp)

    def compressed(self, topic, stamp, rgb, frame_id='camera_optical', fmt='jpeg', quality=90):
        """sensor_msgs/CompressedImage (image_transport's JPEG/PNG payload)."""
        from posenet_ros.core.image_conversion import rgb_to_compressed

        form, data = rgb_to_compressed(rgb, fmt, quality)
        msg = self.ts.types['sensor_msgs/msg/CompressedImage'](
            header=self._header(stamp, frame_id), format=form, data=np.frombuffer(data, np.uint8))
        self.write(topic, 'sensor_msgs/msg/CompressedImage', msg, stamp)

    def camera_info(self, topic, stamp, K, width, height, frame_id='camera_optical'):
        """sensor_msgs/CameraInfo of an undistorted pinhole camera."""
        T = self.ts.types
        K = np.asarray(K, dtype=np.float64)
        P = np.concatenate([K, np.zeros((3, 1))], axis=1)
        msg = T['sensor_msgs/msg/CameraInfo'](
            header=self._header(stamp, frame_id), height=int(height), width=int(width),
            distortion_model='plumb_bob', d=np.zeros(5), k=K.ravel(), r=np.eye(3).ravel(),
            p=P.ravel(), binning_x=0, binning_y=0,
            roi=T['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0,
                                                      do_rectify=False))
        self.write(topic, 'sensor_msgs/msg/CameraInfo', msg, stamp)

    def _pose(self, position, q_wxyz):
        T = self.ts.types
        x, y, z, w = wxyz_to_xyzw(q_wxyz)
        return T['geometry_msgs/msg/Pose'](
            position=T['geometry_msgs/msg/Point'](x=float(position[0]), y=float(position[1]),
                                                  z=float(position[2])),
            orientation=T['geometry_msgs/msg/Quaternion'](x=x, y=y, z=z, w=w))

    def pose(self, topic, stamp, position, q_wxyz, frame_id='map',
             msgtype='geometry_msgs/msg/PoseStamped', child_frame_id='camera_optical'):
        """A pose message (PoseStamped, PoseWithCovarianceStamped or Odometry); q is wxyz."""
        T = self.ts.types
        pose = self._pose(position, q_wxyz)
        header = self._header(stamp, frame_id)
        if msgtype == 'geometry_msgs/msg/PoseStamped':
            msg = T[msgtype](header=header, pose=pose)
        else:
            cov = T['geometry_msgs/msg/PoseWithCovariance'](pose=pose, covariance=np.eye(6).ravel()
                                                            * 0.01)
            if msgtype == 'geometry_msgs/msg/PoseWithCovarianceStamped':
                msg = T[msgtype](header=header, pose=cov)
            else:
                vec = T['geometry_msgs/msg/Vector3']
                twist = T['geometry_msgs/msg/TwistWithCovariance'](
                    twist=T['geometry_msgs/msg/Twist'](linear=vec(x=0.0, y=0.0, z=0.0),
                                                       angular=vec(x=0.0, y=0.0, z=0.0)),
                    covariance=np.zeros(36))
                msg = T[msgtype](header=header, child_frame_id=child_frame_id, pose=cov,
                                 twist=twist)
        self.write(topic, msgtype, msg, stamp)

    def tf(self, stamp, transforms, static: bool = False):
        """One TFMessage on /tf (or /tf_static) of ``[(parent, child, T_parent_child 4x4)]``."""
        T = self.ts.types
        items = []
        for parent, child, mat in transforms:
            p, q = matrix_to_pose(mat)
            x, y, z, w = wxyz_to_xyzw(q)
            items.append(T['geometry_msgs/msg/TransformStamped'](
                header=self._header(stamp, parent), child_frame_id=child,
                transform=T['geometry_msgs/msg/Transform'](
                    translation=T['geometry_msgs/msg/Vector3'](x=p[0], y=p[1], z=p[2]),
                    rotation=T['geometry_msgs/msg/Quaternion'](x=x, y=y, z=z, w=w))))
        self.write('/tf_static' if static else '/tf', 'tf2_msgs/msg/TFMessage',
                   T['tf2_msgs/msg/TFMessage'](transforms=items), stamp)

    def close(self):
        """Finish the bag (writes metadata.yaml)."""
        self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        if exc_type is None:
            self.close()
        else:
            self.writer.close()


def write_bag(out_path, cfg: SceneConfig | None = None, storage: str = 'sqlite3',
              compressed: bool = False, which: str = 'test', progress: bool = True,
              overwrite: bool = False) -> Path:
    """Render a trajectory into a rosbag2 (``which`` = 'test', 'train' or 'all').

    The camera follows the scene's trajectory (so a model trained on the scene relocalizes
    it); the robot's base is derived from it through the fixed mount ``T_BASE_CAM``, so the
    base has the small roll and pitch the camera path has (within ~10 deg) and floats 0.3 to
    0.8 m above the ground: a synthetic rig, not a wheeled robot's dynamics.

    Topics, header stamps advancing at ``cfg.rate``:

    * ``/camera/image_raw`` (Image rgb8), ``/camera/image_raw/compressed`` (JPEG, if
      ``compressed``), ``/camera/camera_info``;
    * ``/tf``: ``map -> odom`` (the odometry's slowly drifting error, :func:`t_map_odom`) and
      ``odom -> base_link`` per frame; ``/tf_static``: ``base_link -> camera_link ->
      camera_optical`` (:data:`T_BASE_CAMLINK`, :data:`T_CAMLINK_OPTICAL`);
    * ``/odom`` (nav_msgs/Odometry, frame odom, child base_link; twist left zero);
    * ``/ground_truth/pose`` (PoseStamped of the camera optical frame in ``map``) and
      ``/ground_truth/base_pose`` (PoseStamped of base_link in ``map``), for evaluation.
    """
    cfg = cfg or SceneConfig()
    if which not in ('train', 'test', 'all'):
        raise ConfigError(f"which must be 'train', 'test' or 'all', got {which!r}")
    out_path = Path(out_path)
    if out_path.exists():
        if not overwrite:
            raise ConfigError(f'{out_path} exists; remove it or pass overwrite=True (--force)')
        shutil.rmtree(out_path)
    scene = make_scene(cfg.seed)
    K = cfg.K()
    total = {'train': cfg.n_train, 'test': cfg.n_test, 'all': cfg.n_train + cfg.n_test}[which]
    T_cam_base = invert(T_BASE_CAM)
    with RosbagWriter(out_path, storage) as bag:
        bag.tf(cfg.start_time, [(cfg.base_frame, cfg.camera_link_frame, T_BASE_CAMLINK),
                                (cfg.camera_link_frame, cfg.camera_frame, T_CAMLINK_OPTICAL)],
               static=True)
        for _, _, p, q, stamp in _progress(_iter_frames(cfg, which), total, 'bag', progress):
            T_map_base = compose(pose_to_matrix(p, q), T_cam_base)
            T_map_odom = t_map_odom(stamp - cfg.start_time)
            T_odom_base = compose(invert(T_map_odom), T_map_base)
            # TF first: a node looking up the image's stamp finds it already buffered.
            bag.tf(stamp, [(cfg.map_frame, cfg.odom_frame, T_map_odom),
                           (cfg.odom_frame, cfg.base_frame, T_odom_base)])
            bag.pose('/odom', stamp, *matrix_to_pose(T_odom_base), frame_id=cfg.odom_frame,
                     msgtype='nav_msgs/msg/Odometry', child_frame_id=cfg.base_frame)
            img = render(scene, p, q, K, cfg.width, cfg.height)
            bag.image('/camera/image_raw', stamp, img, frame_id=cfg.camera_frame)
            if compressed:
                bag.compressed('/camera/image_raw/compressed', stamp, img,
                               frame_id=cfg.camera_frame)
            bag.camera_info('/camera/camera_info', stamp, K, cfg.width, cfg.height,
                            frame_id=cfg.camera_frame)
            bag.pose('/ground_truth/pose', stamp, p, q, frame_id=cfg.map_frame)
            bag.pose('/ground_truth/base_pose', stamp, *matrix_to_pose(T_map_base),
                     frame_id=cfg.map_frame)
    return out_path


def main(argv: list[str] | None = None) -> int:
    """``posenet-ros synth``: render the synthetic dataset folder and optionally a bag."""
    ap = argparse.ArgumentParser(prog='posenet-ros synth', description=__doc__.split('\n')[0])
    ap.add_argument('--out', required=True, type=Path, help='output folder')
    ap.add_argument('--bag', action='store_true', help='also write a rosbag2 to OUT/bag')
    ap.add_argument('--bag-frames', choices=('test', 'train', 'all'), default='test',
                    help='trajectory recorded into the bag (default: test)')
    ap.add_argument('--storage', choices=('sqlite3', 'mcap'), default='sqlite3')
    ap.add_argument('--compressed', action='store_true',
                    help='also write /camera/image_raw/compressed (JPEG)')
    ap.add_argument('--no-dataset', action='store_true', help='skip the dataset folder')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--n-train', type=int, default=300)
    ap.add_argument('--n-test', type=int, default=100)
    ap.add_argument('--width', type=int, default=320)
    ap.add_argument('--height', type=int, default=240)
    ap.add_argument('--fx', type=float, default=None,
                    help='focal length in px (default: 60 deg horizontal field of view)')
    ap.add_argument('--rate', type=float, default=30.0, help='frame rate of the stamps (Hz)')
    ap.add_argument('--force', action='store_true', help='overwrite an existing bag')
    args = ap.parse_args(argv)
    if args.width < 16 or args.height < 16 or args.n_train < 1 or args.n_test < 1:
        raise ConfigError('need --width/--height >= 16 and --n-train/--n-test >= 1')
    fx = args.fx or (args.width / 2) / math.tan(math.radians(30.0))
    cfg = SceneConfig(seed=args.seed, width=args.width, height=args.height, fx=fx,
                      n_train=args.n_train, n_test=args.n_test, rate=args.rate)
    if not args.no_dataset:
        out = write_dataset(args.out / 'dataset', cfg)
        print(f'dataset: {out} ({cfg.n_train} train + {cfg.n_test} test frames, '
              f'{cfg.width}x{cfg.height})')
    if args.bag:
        out = write_bag(args.out / 'bag', cfg, storage=args.storage, compressed=args.compressed,
                        which=args.bag_frames, overwrite=args.force)
        print(f'bag: {out} ({args.storage}, {args.bag_frames} trajectory)')
    return 0
