"""launch/relocalize.launch.py: checked statically everywhere, run for real where launch_ros is."""

import ast
import importlib.util
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from helpers_package import setup_py_arguments

from posenet_ros.ros import params as P

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = ROOT / 'launch' / 'relocalize.launch.py'
REQUIRED_ARGS = ('model', 'image_topic', 'image_transport', 'params_file', 'namespace',
                 'use_sim_time', 'device', 'log_level')


def _launch_module():
    spec = importlib.util.spec_from_file_location('relocalize_launch', LAUNCH_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # no launch import at module level: works without launch_ros
    return mod


def _node_module_constant(name):
    tree = ast.parse((ROOT / 'posenet_ros' / 'ros' / 'relocalize_node.py').read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', None) == name:
            return ast.literal_eval(node.value)
    raise AssertionError(f'{name} not found')


def test_arguments_are_described_and_map_to_real_parameters():
    mod = _launch_module()
    names = [a[0] for a in mod.ARGUMENTS]
    assert len(names) == len(set(names))
    for required in REQUIRED_ARGS:
        assert required in names, required
    config = yaml.safe_load((ROOT / mod.PARAMS_FILE).read_text())['/**']['ros__parameters']
    for name, default, description, param in mod.ARGUMENTS:
        assert len(description) > 10, name
        if param is None:
            continue
        assert param == 'use_sim_time' or param in P.SPECS, param
        assert param == 'use_sim_time' or param in config, param
        # '' keeps the params file's value; a non-empty default would silently override it.
        assert default == '', name
    docs = (ROOT / 'docs' / 'node.md').read_text()
    for name in names:
        assert f'| `{name}` |' in docs, f'launch argument {name} is not documented'


def test_executable_node_name_and_files_exist():
    mod = _launch_module()
    assert mod.NODE_NAME == _node_module_constant('NODE_NAME') == 'posenet_relocalizer'
    setup_text = (ROOT / 'setup.py').read_text()
    assert f"'{mod.EXECUTABLE} = posenet_ros.ros.relocalize_node:main'" in setup_text
    assert f"'{mod.MANAGED_EXECUTABLE} = posenet_ros.ros.node_lifecycle:main'" in setup_text
    assert (ROOT / mod.PARAMS_FILE).is_file()
    root = ET.parse(ROOT / mod.SHM_PROFILE).getroot()
    ns = {'d': 'http://www.eprosima.com'}
    descs = root.findall('.//d:transport_descriptor', ns)
    types = {d.findtext('d:type', namespaces=ns): d for d in descs}
    assert set(types) == {'SHM', 'UDPv4'}
    assert types['SHM'].findtext('d:segment_size', namespaces=ns) == str(16 * 1024 * 1024)
    assert root.findtext('.//d:useBuiltinTransports', namespaces=ns) == 'false'


def test_params_and_profile_are_installed_by_setup_py():
    data = setup_py_arguments()['data_files']
    mod = _launch_module()
    assert str(Path('launch') / LAUNCH_FILE.name) in data['share/posenet_ros/launch']
    for rel in (mod.PARAMS_FILE, mod.SHM_PROFILE):
        assert rel in data['share/posenet_ros/config'], rel


def test_pip_command_in_docs_uses_the_same_params_file():
    docs = (ROOT / 'docs' / 'node.md').read_text()
    mod = _launch_module()
    assert f'relocalize_node --ros-args --params-file {mod.PARAMS_FILE}' in docs
    assert f'python -m posenet_ros.ros.relocalize_node --ros-args --params-file ' \
           f'{mod.PARAMS_FILE}' in docs


@pytest.mark.ros
@pytest.mark.slow
def test_launch_for_real(tmp_path):
    pytest.importorskip('launch_ros', reason='launch_ros is not installed (pip environment)')
    pytest.importorskip('launch')
    from helpers_model import make_tiny_export
    model = make_tiny_export(tmp_path)
    env = dict(os.environ, ROS_LOG_DIR=str(tmp_path))
    proc = subprocess.Popen(['ros2', 'launch', str(LAUNCH_FILE), f'model:={model}',
                             'device:=cpu', 'refine:=off', 'namespace:=launch_test',
                             'namespaced_tf:=true'],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = ''
        for line in proc.stdout:
            out += line
            if 'ready: model' in line:
                break
        assert 'ready: model' in out, out
    finally:
        proc.terminate()
        proc.wait(20)


def test_tf_remaps_for_namespaced_robots():
    remaps = _launch_module().tf_remappings
    nav2 = [('/tf', '/robot1/tf'), ('/tf_static', '/robot1/tf_static')]
    assert remaps('robot1', 'true') == nav2
    assert remaps('/robot1/', 'True') == nav2
    assert remaps('robot1', 'false') == []  # TF stays global unless asked
    assert remaps('', 'true') == []  # no namespace: nothing to move TF into
    assert remaps('robot1', 'false', '/fleet/tf', '') == [('/tf', '/fleet/tf')]
    assert remaps('robot1', 'true', '', '/fleet/tf_static') == [
        ('/tf', '/robot1/tf'), ('/tf_static', '/fleet/tf_static')]
    assert remaps('robot1', 'false', '/tf', '/tf_static') == []


def test_model_is_resolved_in_models_dir_cwd_or_installed_share(tmp_path, monkeypatch):
    resolve = _launch_module().resolve_model
    share = tmp_path / 'share' / 'posenet_ros'
    (share / 'models').mkdir(parents=True)
    (share / 'models' / 'scene.ts').touch()
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert resolve('', '', str(share)) == ''  # the params file's model_path
    assert resolve('/abs/scene.ts', '/opt/models', str(share)) == '/abs/scene.ts'
    assert resolve('scene.ts', '/opt/models', str(share)) == '/opt/models/scene.ts'
    assert resolve('scene.ts', '', str(share)) == str(share / 'models' / 'scene.ts')
    (elsewhere / 'scene.ts').touch()  # the working directory comes first
    assert resolve('scene.ts', '', str(share)) == str(elsewhere / 'scene.ts')
    assert resolve('missing.ts', '', str(share)) == str(elsewhere / 'missing.ts')


@pytest.mark.ros
@pytest.mark.slow
def test_namespaced_tf_remaps_reach_the_node(tmp_path):
    """The launch file's remaps, given to the node as ``ros2 launch`` gives them (``-r``).

    launch_ros turns ``Node(remappings=[(a, b)])`` into ``--ros-args -r a:=b``; the node's
    TF listener and broadcaster must then sit on the robot's namespaced TF topics only.
    """
    pytest.importorskip('rclpy')
    pytest.importorskip('tf2_msgs.msg', reason='tf2_msgs is not built into this environment')
    from helpers_model import make_tiny_export
    from rclpy.node import NodeNameNonExistentError
    from ros_helpers import RosSession

    mod = _launch_module()
    remaps = mod.tf_remappings('robot1', 'true')
    args = ['-r', '__ns:=/robot1'] + [a for f, t in remaps for a in ('-r', f'{f}:={t}')]
    params = {'model_path': str(make_tiny_export(tmp_path)), 'device': 'cpu', 'refine': 'off',
              'num_threads': 1, 'warmup_iterations': 1, 'tf_mode': 'camera'}
    with RosSession('posenet_launch_remaps') as s:
        node = s.start_node(params, extra_args=tuple(args))
        assert node.wait_for_output('ready: model', 120), node.tail()

        def topics():
            try:
                subs = s.node.get_subscriber_names_and_types_by_node(mod.NODE_NAME, '/robot1')
                pubs = s.node.get_publisher_names_and_types_by_node(mod.NODE_NAME, '/robot1')
            except NodeNameNonExistentError:  # not discovered yet
                return set(), set()
            return set(dict(subs)), set(dict(pubs))

        assert s.spin_until(lambda: {'/robot1/tf', '/robot1/tf_static'} <= topics()[0], 20), \
            topics()
        subs, pubs = topics()
        assert '/robot1/tf' in pubs, pubs  # tf_mode camera broadcasts there
        assert not {'/tf', '/tf_static'} & (subs | pubs), (subs, pubs)
