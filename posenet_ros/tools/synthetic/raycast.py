"""Ray casting of the courtyard from a camera pose.

One ray per pixel against the room box and the crates with a z-buffer (numpy, float32); a crate
is only tested on the pixels its screen-space bounding box covers. The face hit by each ray then
gives its atlas coordinates, and one ``cv2.remap`` shades the image. Cameras follow the project's
convention: ``position`` is the camera centre in the map frame and ``quaternion`` (wxyz) the
camera-to-map rotation of the optical frame (z forward, x right, y down); pixel centres are at
integer coordinates (OpenCV).
"""

from __future__ import annotations

import cv2
import numpy as np

from posenet_ros.core.geometry import pose_to_matrix
from posenet_ros.tools.synthetic.scene import ROOM, WALL_HEIGHT, Scene

__all__ = ['render']


def _camera_rays(scene: Scene, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Per-pixel ray directions in the camera frame (cached on the scene per intrinsics)."""
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


def _hit_room(scene: Scene, o: np.ndarray, d: np.ndarray):
    """Face id and ray parameter of the room face (or sky, id ``len(rects)``) each ray exits by."""
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
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
    return fid, zbuf


def _hit_crates(scene: Scene, T_map_cam, o, d, fid, zbuf, K, width, height) -> None:
    """Overwrite ``fid``/``zbuf`` in place where a crate face is nearer than what they hold."""
    R_cm = T_map_cam[:3, :3].T
    t_cm = -R_cm @ T_map_cam[:3, 3]
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


def _shade(scene: Scene, o, d, fid, zbuf) -> np.ndarray:
    """Sample the atlas at each ray's hit point; sky pixels take the colour of their elevation."""
    sky = fid == len(scene.rects)
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


def render(scene: Scene, position, quaternion_wxyz, K, width: int, height: int) -> np.ndarray:
    """Render the scene seen by a camera with pose ``T_map_cam`` -> ``(H, W, 3)`` uint8 RGB."""
    T = pose_to_matrix(position, quaternion_wxyz)
    o = T[:3, 3].astype(np.float32)
    rays = _camera_rays(scene, K, width, height)
    d = rays @ T[:3, :3].T.astype(np.float32)  # ray directions in the map frame, (H, W, 3)
    # Rays parallel to a plane divide by zero: their hit parameter is inf and never the nearest.
    with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
        fid, zbuf = _hit_room(scene, o, d)
        _hit_crates(scene, T, o, d, fid, zbuf, K, width, height)
    return _shade(scene, o, d, fid, zbuf)
