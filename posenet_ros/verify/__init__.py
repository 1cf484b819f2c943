"""Geometric verification and refinement of PoseNet poses against a map of the scene.

ROS-free core shared by ``posenet-ros map``, ``posenet-ros evaluate --map`` and the node:

* :mod:`~posenet_ros.verify.features` - local features (SIFT/RootSIFT or ORB) and matching;
* :mod:`~posenet_ros.verify.pairs` - covisible image pairs chosen from the known poses;
* :mod:`~posenet_ros.verify.triangulation` - multi-view tracks triangulated with known poses;
* :mod:`~posenet_ros.verify.mapfile` - the versioned map file (:class:`SceneMap`);
* :mod:`~posenet_ros.verify.build` - :func:`build_map` and the ``posenet-ros map`` CLI;
* :mod:`~posenet_ros.verify.refine` - :class:`MapLocalizer`: 2D-3D matching, PnP + RANSAC and
  the decision rule (``verified`` / ``unverified`` / ``rejected``), see ``docs/verification.md``.
"""

from posenet_ros.verify.mapfile import MAP_VERSION, SceneMap, load_map, save_map
from posenet_ros.verify.refine import MapLocalizer, Verification, VerifierConfig

__all__ = ['MAP_VERSION', 'SceneMap', 'load_map', 'save_map', 'MapLocalizer', 'Verification',
           'VerifierConfig']
