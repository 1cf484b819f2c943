"""Launch the PoseNet relocalization node with its parameters file.

    ros2 launch posenet_ros relocalize.launch.py model:=/path/to/model.ts
        image_topic:=/camera/color/image_raw image_transport:=compressed   (one line)
    ros2 launch posenet_ros relocalize.launch.py model:=scene.ts models_dir:=/opt/models
        namespace:=robot1 namespaced_tf:=true   (a namespaced Nav2 robot; one line)

Without ``ros2 launch`` (the pip environment) the same node and params file start with::

    relocalize_node --ros-args --params-file config/relocalize.yaml
        -p model_path:=/path/to/model.ts -r __ns:=/robot1
        -r /tf:=/robot1/tf -r /tf_static:=/robot1/tf_static   (one line)

The argument table, the TF remaps and the model look-up below are plain Python (no launch import
at module level) so a test can check them where launch_ros is not installed.
"""

import os

PACKAGE = 'posenet_ros'
EXECUTABLE = 'relocalize_node'
MANAGED_EXECUTABLE = 'relocalize_lifecycle_node'  # launch argument managed:=true
NODE_NAME = 'posenet_relocalizer'
PARAMS_FILE = os.path.join('config', 'relocalize.yaml')
SHM_PROFILE = os.path.join('config', 'fastdds_shm.xml')

# (launch argument, default, description, node parameter it sets or None). An argument that sets
# a node parameter overrides the params file only when given: its default '' keeps the file's
# value (a launch default would silently override a user's own params file).
ARGUMENTS = (
    ('model', '', 'exported PoseNet model (.ts or .pt2); required unless the params file sets '
     'model_path', 'model_path'),
    ('image_topic', '', 'raw camera topic (compressed: <topic>/compressed); default: params '
     'file (/camera/image_raw)', 'image_topic'),
    ('image_transport', '', 'raw or compressed; default: params file (raw)', 'image_transport'),
    ('device', '', 'torch device cpu, cuda, cuda:N or auto; default: params file (auto)',
     'device'),
    ('refine', '', 'request, continuous or off (coarse poses only, no map); default: params '
     'file (request)', 'refine'),
    ('map', '', 'scene map (posenet-ros map); default: params file (<model>.map.npz beside the '
     'model)', 'map_path'),
    ('use_sim_time', '', 'true: use /clock (bag replay) instead of the system clock; default: '
     'params file (false)', 'use_sim_time'),
    ('initial_pose_topic', '', 'topic of the initial-pose hint (absolute; a namespaced Nav2 '
     'listens on /<ns>/initialpose); default: params file (/initialpose)', 'initial_pose_topic'),
    ('models_dir', '', 'folder a relative model path is looked up in (its map beside it); '
     'empty: the working directory, then the installed share/posenet_ros/models', None),
    ('params_file', '', 'parameters YAML; empty = the installed config/relocalize.yaml', None),
    ('namespace', '', 'namespace of the node (its ~/ topics and services move with it)', None),
    ('namespaced_tf', 'false', 'true: read and write TF on /<namespace>/tf and '
     '/<namespace>/tf_static, as the TF of a namespaced Nav2 robot', None),
    ('tf_topic', '', 'topic remapped from /tf (overrides namespaced_tf); empty: /tf', None),
    ('tf_static_topic', '', 'topic remapped from /tf_static (overrides namespaced_tf); empty: '
     '/tf_static', None),
    ('log_level', 'info', 'logging level: debug, info, warn, error or fatal', None),
    ('managed', 'false', 'true: run the lifecycle node (relocalize_lifecycle_node), which waits '
     'for configure and activate, e.g. from nav2_lifecycle_manager', None),
    ('fastdds_shm', 'false', 'true: run the node with config/fastdds_shm.xml (16 MiB shared '
     'memory segment; use it for the camera driver too)', None),
)


def _true(value: str) -> bool:
    return value.strip().lower() in ('1', 'true', 'yes')


def tf_remappings(namespace: str, namespaced_tf: str, tf_topic: str = '',
                  tf_static_topic: str = '') -> list[tuple[str, str]]:
    """The node's ``(from, to)`` remaps of ``/tf`` and ``/tf_static`` (none: TF stays global).

    Nav2's namespaced bringup remaps ``/tf`` to the relative ``tf``, i.e. ``/<ns>/tf``; the
    node reads the camera mount and odometry there and writes its TF there too.
    """
    ns = namespace.strip('/')
    remaps = []
    for name, explicit in (('tf', tf_topic), ('tf_static', tf_static_topic)):
        target = explicit or (f'/{ns}/{name}' if ns and _true(namespaced_tf) else '')
        if target and target != f'/{name}':
            remaps.append((f'/{name}', target))
    return remaps


def resolve_model(model: str, models_dir: str, share: str) -> str:
    """The model file the node loads; its map is looked up beside it (``<stem>.map.npz``).

    Absolute paths stay; a relative one is taken in ``models_dir`` when given, else from the
    working directory when it exists there, else from the package's installed models folder
    (``share/posenet_ros/models``, where ``setup.py`` installs models with their maps). An empty
    ``model`` leaves the params file's ``model_path``.
    """
    if not model or os.path.isabs(os.path.expanduser(model)):
        return os.path.expanduser(model)
    if models_dir:
        return os.path.join(os.path.abspath(os.path.expanduser(models_dir)), model)
    installed = os.path.join(share, 'models', model)
    if not os.path.exists(model) and os.path.exists(installed):
        return installed
    return os.path.abspath(model)


def generate_launch_description():
    """Launch description: the declared arguments and one ``relocalize_node``."""
    # `launch` is the ROS package, not this repository's launch/ folder (isort can't tell).
    from ament_index_python.packages import get_package_share_directory  # noqa: I001
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    share = get_package_share_directory(PACKAGE)

    def make_node(context):
        params_file = LaunchConfiguration('params_file').perform(context)
        params_file = params_file or os.path.join(share, PARAMS_FILE)
        arg = {name: LaunchConfiguration(name).perform(context) for name, *_ in ARGUMENTS}
        overrides = {}
        for name, _, _, param in ARGUMENTS:
            if param is None or arg[name] == '':
                continue
            overrides[param] = _true(arg[name]) if param == 'use_sim_time' else arg[name]
        if arg['model']:
            overrides['model_path'] = resolve_model(arg['model'], arg['models_dir'], share)
        env = {}
        if _true(arg['fastdds_shm']):
            env['FASTDDS_DEFAULT_PROFILES_FILE'] = os.path.join(share, SHM_PROFILE)
        managed = _true(arg['managed'])
        return [Node(
            package=PACKAGE, executable=MANAGED_EXECUTABLE if managed else EXECUTABLE,
            name=NODE_NAME,
            namespace=arg['namespace'], output='screen', emulate_tty=True,
            parameters=[params_file, overrides], additional_env=env,
            remappings=tf_remappings(arg['namespace'], arg['namespaced_tf'], arg['tf_topic'],
                                     arg['tf_static_topic']),
            ros_arguments=['--log-level', arg['log_level']])]

    args = [DeclareLaunchArgument(name, default_value=default, description=desc)
            for name, default, desc, _ in ARGUMENTS]
    return LaunchDescription(args + [OpaqueFunction(function=make_node)])
