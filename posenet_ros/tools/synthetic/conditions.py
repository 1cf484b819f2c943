"""The courtyard under other conditions: dusk, another light, motion blur, defocus.

Each condition is a *kind* and a *strength* (0: as recorded, 1: the reference change; larger is
allowed), so a benchmark can sweep how much of each change verification survives:

* ``dark``: exposure gain ``0.5 ** s`` (s = 1: half the brightness), a gamma curve
  ``1 + 0.4 s`` (mid-tones darker still) and sensor noise: read noise of ``3 s`` grey levels
  plus shot noise growing with the signal, quantised to uint8 like a camera's output;
* ``light``: the scene re-lit (:func:`relit_scene`): a low evening sun from another azimuth
  shades every face by its normal (Lambert, so crate sides facing the sun and those facing
  away change differently), with a warm colour cast; ``s`` scales the cast and the shading;
* ``blur``: linear motion blur of ``9 s`` px along the image motion of the camera (the flow of
  the image centre between two consecutive poses, :func:`motion_direction`), or horizontal;
* ``defocus``: a disk (pill-box) point-spread function of radius ``2 s`` px, a slightly
  out-of-focus lens.

Photometric changes (``dark``, ``blur``, ``defocus``) act on a rendered frame; ``light`` changes
the scene itself, so it is applied with :func:`render_condition`, which handles all kinds.
The blur is image-space (one kernel for the frame): it is what a rotating camera sees, without
the parallax of a translating one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from posenet_ros.core.errors import ConfigError
from posenet_ros.core.geometry import pose_to_matrix
from posenet_ros.tools.synthetic.raycast import render
from posenet_ros.tools.synthetic.scene import Scene

__all__ = ['CONDITION_KINDS', 'Condition', 'apply_condition', 'relit_scene', 'render_condition',
           'motion_direction', 'parse_condition', 'write_condition_dataset']

CONDITION_KINDS = ('recorded', 'dark', 'light', 'blur', 'defocus')


@dataclass(frozen=True)
class Condition:
    """One condition: ``kind`` (:data:`CONDITION_KINDS`) at ``strength`` (1: reference)."""

    kind: str = 'recorded'
    strength: float = 1.0

    def __post_init__(self):
        if self.kind not in CONDITION_KINDS:
            raise ConfigError(f'unknown condition {self.kind!r}; choose one of '
                              f'{", ".join(CONDITION_KINDS)}')
        if not (math.isfinite(self.strength) and self.strength >= 0):
            raise ConfigError(f'condition strength must be a number >= 0, got {self.strength}')

    @property
    def name(self) -> str:
        """``kind`` or ``kind:strength`` (the form :func:`parse_condition` reads)."""
        if self.kind == 'recorded':
            return 'recorded'
        return f'{self.kind}:{self.strength:g}'


def parse_condition(text: str) -> Condition:
    """``'dark'``, ``'blur:0.5'`` ... -> :class:`Condition`."""
    kind, _, strength = str(text).partition(':')
    try:
        return Condition(kind, float(strength) if strength else 1.0)
    except ValueError:
        raise ConfigError(f'condition {text!r}: write KIND or KIND:STRENGTH, e.g. blur:0.5') \
            from None


def _dark(rgb: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    x = (rgb.astype(np.float32) / 255.0) ** (1.0 + 0.4 * s) * (0.5 ** s) * 255.0
    noise = rng.normal(size=x.shape).astype(np.float32)
    x = x + noise * np.sqrt((3.0 * s) ** 2 + 0.25 * s * x)  # read noise + shot noise
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _line_kernel(length: float, direction) -> np.ndarray:
    """Normalised kernel of a line ``length`` px long along ``direction`` (dx, dy)."""
    d = np.asarray(direction, np.float64)
    d = d / max(float(np.linalg.norm(d)), 1e-12)
    size = int(math.ceil(length)) | 1
    k = np.zeros((size * 4, size * 4), np.float32)  # drawn at 4x, then area-averaged
    c = (size * 4 - 1) / 2.0
    half = length * 4 / 2.0
    p0 = (c - d[0] * half, c - d[1] * half)
    p1 = (c + d[0] * half, c + d[1] * half)
    cv2.line(k, (int(round(p0[0] * 16)), int(round(p0[1] * 16))),
             (int(round(p1[0] * 16)), int(round(p1[1] * 16))), 1.0, 4, cv2.LINE_AA, 4)
    k = cv2.resize(k, (size, size), interpolation=cv2.INTER_AREA)
    return k / k.sum()


def _disk_kernel(radius: float) -> np.ndarray:
    r = int(math.ceil(radius))
    y, x = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
    # anti-aliased edge: pixel weight = fraction of it inside the circle (approximately)
    k = np.clip(radius + 0.5 - np.sqrt(x * x + y * y), 0.0, 1.0)
    return k / k.sum()


def apply_condition(rgb: np.ndarray, condition: Condition, *, motion=None,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 as seen under ``condition`` (photometric kinds only).

    ``motion``: image motion direction (dx, dy) for ``blur`` (default horizontal). ``light``
    needs the scene: use :func:`render_condition`.
    """
    s = float(condition.strength)
    if condition.kind == 'recorded' or s == 0:
        return rgb
    if condition.kind == 'dark':
        return _dark(rgb, s, rng if rng is not None else np.random.default_rng(0))
    if condition.kind == 'blur':
        k = _line_kernel(9.0 * s, motion if motion is not None else (1.0, 0.0))
    elif condition.kind == 'defocus':
        k = _disk_kernel(2.0 * s)
    else:
        raise ConfigError(f'condition {condition.kind!r} changes the scene, not the frame: '
                          'render it with render_condition')
    return cv2.filter2D(rgb, -1, k, borderType=cv2.BORDER_REFLECT)


def relit_scene(scene: Scene, strength: float = 1.0, sun_azimuth_deg: float = 200.0,
                sun_elevation_deg: float = 15.0, tint=(1.0, 0.78, 0.55)) -> Scene:
    """A copy of ``scene`` lit by a low sun: each face's texture scaled by Lambert shading.

    The recorded courtyard is evenly lit (no shading). Here each face gets
    ``ambient + (1 - ambient) max(0, n . sun)`` with ambient ``1 - 0.6 strength``, times a
    warm tint ``tint ** strength`` (RGB factors).
    """
    az, el = math.radians(sun_azimuth_deg), math.radians(sun_elevation_deg)
    sun = np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
    ambient = max(0.0, 1.0 - 0.6 * strength)
    colour = np.asarray(tint, np.float32) ** strength
    atlas = scene.atlas.astype(np.float32)
    for f, rect in enumerate(scene.rects):
        normal = np.zeros(3)
        normal[rect.axis] = rect.outward
        shade = ambient + (1.0 - ambient) * max(0.0, float(normal @ sun))
        corners = np.array([rect.lo, rect.hi, [rect.lo[0], rect.hi[1], rect.lo[2]],
                            [rect.hi[0], rect.lo[1], rect.hi[2]]])
        u = corners @ scene.affine_u[f, :3] + scene.affine_u[f, 3]
        v = corners @ scene.affine_v[f, :3] + scene.affine_v[f, 3]
        # the texture spans texel centres round(min + 0.5) .. round(max + 0.5) - 1, plus the
        # 2-texel replicated border the atlas keeps around it
        c0, c1 = int(round(u.min() + 0.5)) - 2, int(round(u.max() + 0.5)) + 2
        r0, r1 = int(round(v.min() + 0.5)) - 2, int(round(v.max() + 0.5)) + 2
        atlas[max(r0, 0):r1, max(c0, 0):c1] *= shade * colour
    sky = scene.sky * (1.0 - 0.5 * min(strength, 1.0)) * colour  # an evening sky
    return replace(scene, atlas=np.clip(atlas, 0, 255).astype(np.uint8),
                   sky=sky.astype(np.float32), _rays=scene._rays)


def motion_direction(K, pose_a, pose_b, depth: float = 4.0) -> np.ndarray:
    """Image motion (dx, dy) px of the point ``depth`` m ahead of the centre of ``pose_a``.

    ``pose_a``/``pose_b``: ``(position, wxyz)`` of two consecutive frames (``T_map_cam``).
    Falls back to horizontal when the point does not move or leaves the view.
    """
    Ta, Tb = pose_to_matrix(*pose_a), pose_to_matrix(*pose_b)
    p = Ta[:3, :3] @ np.array([0.0, 0.0, depth]) + Ta[:3, 3]
    pc = Tb[:3, :3].T @ (p - Tb[:3, 3])
    K = np.asarray(K, np.float64)
    if pc[2] <= 1e-6:
        return np.array([1.0, 0.0])
    uv = (K @ pc)[:2] / pc[2]
    flow = uv - K[:2, 2]
    return flow if np.linalg.norm(flow) > 1e-6 else np.array([1.0, 0.0])


def render_condition(scene: Scene, pose, K, width: int, height: int, condition: Condition, *,
                     next_pose=None, rng: np.random.Generator | None = None,
                     lit: Scene | None = None) -> np.ndarray:
    """Render ``pose`` (position, wxyz) of ``scene`` under ``condition``.

    ``next_pose``: the following frame's pose, which gives the blur its direction. ``lit``: a
    :func:`relit_scene` of ``scene`` made once for many ``light`` frames.
    """
    if condition.kind == 'light':
        lit = lit if lit is not None else relit_scene(scene, condition.strength)
        return render(lit, pose[0], pose[1], K, width, height)
    img = render(scene, pose[0], pose[1], K, width, height)
    motion = motion_direction(K, pose, next_pose) if next_pose is not None else None
    return apply_condition(img, condition, motion=motion, rng=rng)


def write_condition_dataset(out_dir, cfg, condition: Condition, seed: int = 0):
    """The courtyard's train and test frames under ``condition`` as a manifest dataset.

    Same poses, names and intrinsics as :func:`~posenet_ros.tools.synthetic.write_dataset`;
    the blur follows each trajectory's next frame. ``seed`` seeds the sensor noise.
    """
    from pathlib import Path

    from posenet_ros.datasets.manifest import write_manifest
    from posenet_ros.datasets.types import PoseSample
    from posenet_ros.tools.synthetic.rig import trajectory
    from posenet_ros.tools.synthetic.scene import make_scene

    out_dir = Path(out_dir)
    (out_dir / 'images').mkdir(parents=True, exist_ok=True)
    scene = make_scene(cfg.seed)
    lit = relit_scene(scene, condition.strength) if condition.kind == 'light' else None
    rng = np.random.default_rng(seed)
    K = cfg.K()
    samples = []
    for split, n in (('train', cfg.n_train), ('test', cfg.n_test)):
        if n < 1:
            continue
        poses = trajectory(split, n, cfg.seed)
        for i, pose in enumerate(poses):
            nxt = poses[i + 1] if i + 1 < n else None
            img = render_condition(scene, pose, K, cfg.width, cfg.height, condition,
                                   next_pose=nxt, rng=rng, lit=lit)
            path = out_dir / 'images' / f'{split}_{i:05d}.png'
            if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
                raise ConfigError(f'cannot write {path}; check that the folder is writable')
            samples.append(PoseSample(position=pose[0], quaternion=pose[1], split=split,
                                      image_path=path, intrinsics=K, name=path.name))
    write_manifest(out_dir, samples, info={'format': 'posenet_ros-manifest', 'version': 1,
                                           'source': 'synthetic', 'condition': condition.name})
    return out_dir
