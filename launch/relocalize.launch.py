"""Launch the PoseNet relocalization node with its parameters file.

    ros2 launch posenet_ros relocalize.launch.py model:=/path/to/model.ts
        image_topic:=/camera/color/image_raw image_transport:=compressed   (one line)

Without ``ros2 launch`` (the pip environment) the same node and params file start with::

    relocalize_node --ros-args --params-file config/relocalize.yaml
        -p model_path:=/path/to/model.ts -r __ns:=/robot   (one line)

The argument table below is plain data (no launch import at module level) so a test can check
it against ``config/relocalize.yaml`` where launch_ros is not installed.
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
    ('params_file', '', 'parameters YAML; empty = the installed config/relocalize.yaml', None),
    ('namespace', '', 'namespace of the node (its ~/ topics and services move with it)', None),
    ('log_level', 'info', 'logging level: debug, info, warn, error or fatal', None),
    ('managed', 'false', 'true: run the lifecycle node (relocalize_lifecycle_node), which waits '
     'for configure and activate, e.g. from nav2_lifecycle_manager', None),
    ('fastdds_shm', 'false', 'true: run the node with config/fastdds_shm.xml (16 MiB shared '
     'memory segment; use it for the camera driver too)', None),
)


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
        overrides = {}
        for name, _, _, param in ARGUMENTS:
            value = LaunchConfiguration(name).perform(context)
            if param is None or value == '':
                continue
            overrides[param] = (value.lower() in ('1', 'true', 'yes') if param == 'use_sim_time'
                                else value)
        env = {}
        if LaunchConfiguration('fastdds_shm').perform(context).lower() in ('1', 'true', 'yes'):
            env['FASTDDS_DEFAULT_PROFILES_FILE'] = os.path.join(share, SHM_PROFILE)
        managed = LaunchConfiguration('managed').perform(context).lower() in ('1', 'true', 'yes')
        return [Node(
            package=PACKAGE, executable=MANAGED_EXECUTABLE if managed else EXECUTABLE,
            name=NODE_NAME,
            namespace=LaunchConfiguration('namespace'), output='screen', emulate_tty=True,
            parameters=[params_file, overrides], additional_env=env,
            ros_arguments=['--log-level', LaunchConfiguration('log_level')])]

    args = [DeclareLaunchArgument(name, default_value=default, description=desc)
            for name, default, desc, _ in ARGUMENTS]
    return LaunchDescription(args + [OpaqueFunction(function=make_node)])
