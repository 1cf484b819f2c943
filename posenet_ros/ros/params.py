"""Every parameter of the relocalization node: one table, its validation, its ROS descriptors.

The table (:data:`PARAMS`) is plain Python so the defaults, ``config/relocalize.yaml``, the launch
file and ``docs/node.md`` can be checked against it without ROS. :func:`validate` is the single
rule set used both at start-up and in the node's ``on_set_parameters`` callback, so a value that
would be refused at run time is also refused in a params file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# The one validation of a hand-written camera mount, shared with the bag readers.
from posenet_ros.core.transforms import QUAT_TOLERANCE, extrinsic_problem

__all__ = ['ParamSpec', 'PARAMS', 'SPECS', 'defaults', 'normalize', 'validate', 'descriptor',
           'extrinsic_problem', 'QUAT_TOLERANCE', 'declare']

TF_MODES = ('camera', 'map_to_odom', 'none')
TRANSPORTS = ('raw', 'compressed')
RELIABILITIES = ('best_effort', 'reliable')
REFINE_MODES = ('off', 'request', 'continuous')
RECOVERY_MODES = ('off', 'report', 'auto')
DEVICES_HELP = "'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available, else cpu)"


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter: name, default (its type is the parameter type) and constraints."""

    name: str
    default: Any
    description: str
    read_only: bool = False
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    additional: str = field(default='')  # extra constraint text shown by `ros2 param describe`
    # YAML (params files and `-p name:=value`) reads an unquoted `off` as the boolean false:
    # such a string parameter is declared dynamically typed and false is read as 'off'.
    yaml_off: bool = False


PARAMS: tuple[ParamSpec, ...] = (
    # --- model (a restart is needed to change any of these) ---
    ParamSpec('model_path', '', 'exported PoseNet model (.ts or .pt2) to load; required',
              read_only=True),
    ParamSpec('device', 'auto', f'torch device: {DEVICES_HELP}', read_only=True),
    ParamSpec('warmup_iterations', 3, 'forward passes run before subscribing (first calls are '
              'slow)', read_only=True, min=0, max=100),
    ParamSpec('num_threads', 0, "torch intra-op CPU threads; 0 keeps torch's default",
              read_only=True, min=0, max=256),
    # --- verification against the scene map (docs/verification.md) ---
    ParamSpec('refine', 'request', 'request: ~/relocalize answers and sends the initial pose only '
              'from a pose verified against the scene map; continuous: also verify frames on a '
              'thread of their own and publish verified poses on ~/verified_pose; off: coarse '
              'PoseNet poses only (no map needed, nothing is verified)', read_only=True,
              choices=REFINE_MODES, yaml_off=True),
    ParamSpec('map_path', '', 'scene map (posenet-ros map); empty = <model>.map.npz beside '
              'model_path', read_only=True),
    ParamSpec('camera_info_topic', '', 'sensor_msgs/CameraInfo with the intrinsics of the '
              'image_topic frames; empty = camera_info beside image_topic '
              "(/camera/image_raw -> /camera/camera_info); without it the map's intrinsics are "
              'used', read_only=True),
    # --- input ---
    ParamSpec('image_topic', '/camera/image_raw', 'raw camera topic; the compressed transport '
              'subscribes to <image_topic>/compressed', read_only=True),
    ParamSpec('image_transport', 'raw', 'raw (sensor_msgs/Image) or compressed '
              '(sensor_msgs/CompressedImage, JPEG/PNG)', read_only=True, choices=TRANSPORTS),
    ParamSpec('input_reliability', 'best_effort', 'camera subscription reliability; best_effort '
              'matches both reliable and best-effort publishers', read_only=True,
              choices=RELIABILITIES),
    ParamSpec('max_image_age', 0.5, 'frames older than this (s, node clock minus image stamp) are '
              'dropped; 0 disables the check', min=0.0, max=3600.0),
    # --- output ---
    ParamSpec('continuous', True, 'publish a pose for every processed frame (also set by the '
              '~/enable service); off: only ~/relocalize requests are served'),
    ParamSpec('max_rate', 0.0, 'upper limit of the continuous output rate (Hz); 0 = as fast as '
              'frames arrive and the model keeps up', min=0.0, max=1000.0),
    ParamSpec('map_frame', '', "frame of the published poses; empty = the model's "
              'metadata frames.map_frame'),
    ParamSpec('camera_frame', '', 'camera optical frame the pose describes; empty = the image '
              "header frame_id, else the model's frames.camera_frame"),
    ParamSpec('position_stddev', 0.5, 'standard deviation (m) of x, y, z in the published '
              'covariance', min=1e-4, max=1000.0),
    ParamSpec('orientation_stddev', 0.2, 'standard deviation (rad) of roll, pitch, yaw in the '
              'published covariance', min=1e-4, max=math.pi),
    # --- TF ---
    ParamSpec('tf_mode', 'camera', 'camera: map -> <camera_frame><tf_child_suffix>; '
              'map_to_odom: map -> odom from the base pose and TF odom -> base_frame (needs the '
              'extrinsic); none', read_only=True,
              choices=TF_MODES),
    ParamSpec('tf_child_suffix', '_posenet', 'suffix of the child frame broadcast in camera mode '
              '(a distinct frame, so it never gives the camera a second parent)', read_only=True),
    ParamSpec('odom_frame', 'odom', 'odometry frame (map_to_odom mode)'),
    ParamSpec('base_frame', 'base_link', 'robot base frame of ~/base_pose_with_covariance, the '
              'initial-pose hint and map_to_odom'),
    ParamSpec('transform_tolerance', 0.1, 'map -> odom is future-dated by this much (s), as AMCL '
              'does', min=0.0, max=10.0),
    ParamSpec('tf_timeout', 0.05, 'longest wait (s) for a TF lookup at the image stamp',
              min=0.0, max=5.0),
    # --- SLAM fallback ---
    ParamSpec('initial_pose_topic', '/initialpose', 'topic of the one-shot initial-pose hint '
              '(PoseWithCovarianceStamped of base_frame in map) sent by ~/relocalize',
              read_only=True),
    ParamSpec('camera_in_base', [], 'mount extrinsic T_base_camera as [x, y, z, qx, qy, qz, qw] '
              '(the camera optical frame in base_frame, m and unit quaternion xyzw), used when TF '
              'cannot provide base_frame -> camera_frame; empty (the default) = unset: without '
              'TF and without this, base-frame outputs (~/base_pose_with_covariance, the '
              'initial pose, map -> odom) are refused. A forward-looking camera is never the '
              'identity: see docs/node.md "Camera extrinsic"',
              additional='empty, or 7 numbers: translation (m) and unit quaternion xyzw'),
    ParamSpec('use_tf_extrinsic', True, 'look up base_frame -> camera_frame in TF (tf2_ros, or '
              'the built-in /tf + /tf_static listener where tf2_ros is absent) for the '
              'base-frame outputs; falls back to camera_in_base', read_only=True),
    ParamSpec('relocalize_timeout', 2.0, 'longest wait (s) of ~/relocalize for a valid (with '
              'refine on: verified) frame',
              min=0.05, max=60.0),
    # --- supervision of a localizer (docs/node.md, "Supervision") ---
    ParamSpec('recovery', 'off', 'supervise the localizer that publishes map -> odom (AMCL, ...) '
              'with verified poses: off; report: state on ~/supervision and /diagnostics only; '
              'auto: also send one initial pose when it is lost, and retry (needs refine on)',
              read_only=True, choices=RECOVERY_MODES, yaml_off=True),
    ParamSpec('auto_initialize', True, 'with recovery auto: initialize a localizer that has no '
              'pose yet (no map -> odom) from the first consistent verified poses'),
    ParamSpec('supervision_rate', 2.0, 'verification budget of supervision (verified frames/s) '
              'when refine is request; continuous verifies every frame anyway', min=0.1,
              max=100.0),
    ParamSpec('supervise_position_error', 0.5, 'a verified pose disagrees with the localizer '
              'beyond this (m), raised to 3 sigma of both covariances', min=0.01, max=100.0),
    ParamSpec('supervise_angle_error', 10.0, 'the same in angle (deg)', min=0.1, max=180.0),
    ParamSpec('supervise_min_frames', 3, 'disagreeing verified frames, consistent with each '
              'other through odometry, that make the localizer lost', min=2, max=100),
    ParamSpec('supervise_min_span', 0.3, '... spanning at least this long (s)', min=0.0,
              max=60.0),
    ParamSpec('reinit_timeout', 3.0, 'wait this long (s) for the localizer to agree after an '
              'initial pose', min=0.1, max=600.0),
    ParamSpec('max_reinit_attempts', 3, 'initial poses sent per recovery before the state is '
              'failed (retries wait 2, 4, 8... s more)', min=1, max=100),
    ParamSpec('min_reinit_interval', 5.0, 'minimum time (s) between two initial poses sent by '
              'supervision', min=0.0, max=3600.0),
    ParamSpec('max_speed', 0.0, 'send no initial pose while odometry says the base moves faster '
              'than this (m/s); 0 = no limit', min=0.0, max=100.0),
    ParamSpec('localizer_pose_topic', '', "the localizer's PoseWithCovarianceStamped (e.g. "
              '/amcl_pose): its covariance widens the disagreement thresholds; empty = TF only',
              read_only=True),
    ParamSpec('covariance_floor_position', 0.05, 'minimum standard deviation (m) of every '
              'position direction on /initialpose and ~/verified_pose, so that AMCL spreads its '
              'particles over a small error', min=0.0, max=100.0),
    ParamSpec('covariance_floor_orientation', 0.035, 'the same for rotations (rad; 0.035 = 2 '
              'deg)', min=0.0, max=math.pi),
    # --- diagnostics ---
    ParamSpec('diagnostics_period', 1.0, 'period (s) of /diagnostics messages', read_only=True,
              min=0.05, max=60.0),
    ParamSpec('log_throttle', 5.0, 'minimum period (s) between repeated warnings of one kind',
              min=0.0, max=3600.0),
)

SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMS}


def defaults() -> dict[str, Any]:
    """Name -> default value of every parameter (a fresh copy)."""
    return {p.name: (list(p.default) if isinstance(p.default, list) else p.default)
            for p in PARAMS}


def _type_ok(spec: ParamSpec, value: Any) -> bool:
    d = spec.default
    if isinstance(d, bool):
        return isinstance(value, bool)
    if isinstance(d, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(d, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(d, str):
        return isinstance(value, str)
    if isinstance(d, list):
        return isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return False


def normalize(name: str, value: Any) -> Any:
    """The value as the node uses it: YAML's ``false`` is ``'off'`` for ``yaml_off`` params."""
    spec = SPECS.get(name)
    if spec is not None and spec.yaml_off and value is False:
        return 'off'
    return value


def validate(name: str, value: Any) -> str | None:
    """Return why ``value`` is not acceptable for parameter ``name``, or ``None`` if it is."""
    spec = SPECS.get(name)
    if spec is None:
        return f'unknown parameter {name!r}'
    value = normalize(name, value)
    if not _type_ok(spec, value):
        return f'{name} must be a {type(spec.default).__name__}, got {value!r}'
    if spec.choices and value not in spec.choices:
        return f'{name} must be one of {", ".join(spec.choices)}, got {value!r}'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(float(value)):
            return f'{name} must be finite, got {value!r}'
        if spec.min is not None and value < spec.min:
            return f'{name} must be >= {spec.min}, got {value!r}'
        if spec.max is not None and value > spec.max:
            return f'{name} must be <= {spec.max}, got {value!r}'
    if name == 'device':
        dev = value.strip().lower()
        if not (dev in ('auto', 'cpu', 'cuda') or (dev.startswith('cuda:')
                                                    and dev[5:].isdigit())):
            return f'device must be {DEVICES_HELP}, got {value!r}'
    if name == 'camera_in_base':
        reason = extrinsic_problem(value)
        if reason:
            return reason
    if name in ('map_frame', 'odom_frame', 'base_frame', 'camera_frame', 'tf_child_suffix'):
        if value != value.strip() or ' ' in value:
            return f'{name} must not contain spaces, got {value!r}'
        if value.startswith('/'):
            return f'{name}: tf2 frame ids must not start with "/", got {value!r}'
        if name in ('odom_frame', 'base_frame') and not value:
            return f'{name} must not be empty'
    if name in ('image_topic', 'initial_pose_topic') and not value.strip():
        return f'{name} must not be empty'
    return None


def descriptor(spec: ParamSpec):
    """``rcl_interfaces/ParameterDescriptor`` of a spec (ranges, read-only, description)."""
    from rcl_interfaces.msg import (
        FloatingPointRange,
        IntegerRange,
        ParameterDescriptor,
        ParameterType,
    )

    d = spec.default
    ptype = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
             float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
             list: ParameterType.PARAMETER_DOUBLE_ARRAY}[type(d)]
    extra = spec.additional
    if spec.choices:
        extra = 'one of: ' + ', '.join(spec.choices)
    desc = ParameterDescriptor(name=spec.name, type=ptype, description=spec.description,
                               additional_constraints=extra, read_only=spec.read_only)
    if spec.yaml_off:  # accept the boolean false YAML makes of an unquoted `off`
        desc.dynamic_typing = True
    if spec.min is not None and isinstance(d, float):
        desc.floating_point_range = [FloatingPointRange(
            from_value=float(spec.min), to_value=float(spec.max), step=0.0)]
    elif spec.min is not None and isinstance(d, int) and not isinstance(d, bool):
        desc.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max),
                                           step=1)]
    return desc


def _declared(node, name: str):
    """A declared parameter (``.value`` None while unset, e.g. ``camera_in_base: []``)."""
    from types import SimpleNamespace

    from rclpy.exceptions import ParameterUninitializedException

    try:
        return node.get_parameter(name)
    except ParameterUninitializedException:
        return SimpleNamespace(value=None)


def declare(node) -> dict:
    """Declare every parameter on ``node`` and return the validated values.

    Raises :class:`~posenet_ros.core.errors.ConfigError` for a wrong type or value and
    :class:`~posenet_ros.core.errors.ModelNotFoundError` for a missing model file (checked
    here, before torch is imported); unknown parameters (typos) are logged.
    """
    from pathlib import Path

    from rclpy.parameter import Parameter

    from posenet_ros.core.errors import ConfigError, ModelNotFoundError

    cfg = {}
    for spec in PARAMS:
        # An empty list default (camera_in_base: unset) has no element type: rclpy would
        # make it a byte array, so declare the type and let the value be unset.
        default = Parameter.Type.DOUBLE_ARRAY if spec.default == [] else spec.default
        try:
            # Declared once: a managed node configured again after cleanup reads them back.
            param = (_declared(node, spec.name) if node.has_parameter(spec.name) else
                     node.declare_parameter(spec.name, default, descriptor(spec)))
        except Exception as exc:  # rclpy: wrong type / out of range in a params file
            hint = (' (write doubles with a decimal point, e.g. 3.0 or [0.0, 1.0])'
                    if isinstance(spec.default, (float, list)) else '')
            raise ConfigError(f'parameter {spec.name}: {exc}{hint}') from exc
        value = [] if param.value is None and spec.default == [] else param.value
        cfg[spec.name] = normalize(spec.name, value)
    for name, value in cfg.items():
        reason = validate(name, value)
        if reason:
            raise ConfigError(f'invalid parameter: {reason}')
    if not cfg['model_path']:
        raise ConfigError('parameter model_path is empty: pass the exported model, e.g. '
                          '--ros-args -p model_path:=/path/to/model.ts')
    if not Path(cfg['model_path']).expanduser().is_file():
        raise ModelNotFoundError(f'model file {cfg["model_path"]} (parameter model_path) does '
                                 'not exist; export one with posenet-ros train or fix the path')
    cfg['model_path'] = str(Path(cfg['model_path']).expanduser())
    overrides = getattr(node, '_parameter_overrides', {}) or {}
    unknown = sorted(set(overrides) - set(SPECS) - {'use_sim_time'})
    if unknown:
        node.get_logger().warning(f'ignoring unknown parameters (typo?): {", ".join(unknown)}')
    return cfg
