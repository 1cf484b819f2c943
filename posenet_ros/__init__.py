"""posenet_ros: real-time monocular camera relocalization with PoseNet for ROS 2.

The core (this package minus ``posenet_ros.ros``) imports no rclpy. The main Python entry
points are importable from here, loaded on first use so ``import posenet_ros`` stays light:

* :class:`~posenet_ros.localizer.Localizer`: the frame pipeline (coarse pose, base pose,
  covariances, verification against the scene map);
* :class:`~posenet_ros.model.relocalizer.Relocalizer`: the model runtime (load, predict);
* :func:`~posenet_ros.model.export.read_metadata`: an export's metadata without loading it.
"""

from importlib import import_module

__version__ = '0.1.0'
__all__ = ['Localizer', 'Relocalizer', 'read_metadata', '__version__']

_LAZY = {
    'Localizer': 'posenet_ros.localizer',
    'Relocalizer': 'posenet_ros.model.relocalizer',
    'read_metadata': 'posenet_ros.model.export',
}


def __getattr__(name: str):
    """Import a top-level entry point on first access (torch loads only then)."""
    if name not in _LAZY:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
