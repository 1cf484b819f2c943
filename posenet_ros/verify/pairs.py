"""Image pairs for mapping, chosen from the frames' known poses (no image retrieval needed).

Two frames are *covisible candidates* when their optical axes differ by at most
``max_view_angle_deg``. Among a frame's candidates, sorted by camera-centre distance, the pairs
take log-spaced ranks (1st, 2nd, 4th, 8th, ... nearest): the near pairs match easily and chain
into long tracks, the far ones give the wide baselines that make triangulated points accurate
(points from near-identical neighbouring frames alone give confident but wrong PnP poses).
"""

from __future__ import annotations

import numpy as np

from posenet_ros.core.geometry import quat_to_matrix

__all__ = ['optical_axes', 'select_pairs', 'DEFAULT_RANKS']

DEFAULT_RANKS = (0, 1, 3, 7, 15, 31)


def optical_axes(quaternions_wxyz: np.ndarray) -> np.ndarray:
    """Unit viewing directions (N, 3) in the map frame: the optical z axis of ``R_map_cam``."""
    q = np.asarray(quaternions_wxyz, np.float64).reshape(-1, 4)
    return np.array([quat_to_matrix(qi)[:, 2] for qi in q]).reshape(-1, 3)


def select_pairs(positions: np.ndarray, quaternions_wxyz: np.ndarray,
                 max_view_angle_deg: float = 40.0, ranks=DEFAULT_RANKS,
                 max_distance: float | None = None) -> np.ndarray:
    """Unique frame pairs ``(P, 2)`` (i < j) to match; see the module docstring."""
    pos = np.asarray(positions, np.float64).reshape(-1, 3)
    axes = optical_axes(quaternions_wxyz)
    n = len(pos)
    cos_max = np.cos(np.radians(max_view_angle_deg))
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    covis = (axes @ axes.T) >= cos_max
    np.fill_diagonal(covis, False)
    if max_distance is not None:
        covis &= dist <= max_distance
    pairs = set()
    for i in range(n):
        cand = np.flatnonzero(covis[i])
        if not len(cand):
            continue
        order = cand[np.argsort(dist[i, cand], kind='stable')]
        for r in ranks:
            if r < len(order):
                j = int(order[r])
                pairs.add((min(i, j), max(i, j)))
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
