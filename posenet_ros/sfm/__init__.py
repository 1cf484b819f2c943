"""Training labels from structure from motion: COLMAP/NVM import, Sim(3) alignment, labelling.

* :mod:`posenet_ros.sfm.colmap_io` / :mod:`posenet_ros.sfm.nvm`: reconstruction readers;
* :mod:`posenet_ros.sfm.align`: Umeyama Sim(3) estimation and pose mapping;
* :mod:`posenet_ros.sfm.importers`: ``posenet-ros import-sfm`` (reconstruction -> dataset);
* :mod:`posenet_ros.sfm.label`: ``posenet-ros label`` (images/video/bag -> SfM -> dataset).

Importing this package is cheap: pycolmap is imported only where SfM runs or a COLMAP model is
read.
"""
