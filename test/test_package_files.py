"""colcon-relevant files: package.xml (format 3) and setup.py's data_files."""

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

from helpers_package import setup_py_arguments

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_format3_and_dependencies():
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.tag == 'package' and root.get('format') == '3'
    assert root.findtext('name') == 'posenet_ros'
    assert root.find('export/build_type').text == 'ament_python'
    deps = {e.text for e in root.findall('exec_depend')}
    for key in ('rclpy', 'sensor_msgs', 'geometry_msgs', 'std_srvs', 'tf2_msgs', 'tf2_ros_py',
                'diagnostic_msgs', 'python3-numpy', 'python3-opencv', 'python3-torch',
                'python3-torchvision'):
        assert key in deps, key
    assert (ROOT / 'resource' / 'posenet_ros').is_file()
    cfg = (ROOT / 'setup.cfg').read_text()
    assert 'script_dir=$base/lib/posenet_ros' in cfg
    assert 'install_scripts=$base/lib/posenet_ros' in cfg


def test_setup_py_data_files_install_launch_config_models():
    info = setup_py_arguments()  # setuptools' own resolution, setup.py run in the repo root
    data = info['data_files']
    assert data['share/ament_index/resource_index/packages'] == ['resource/posenet_ros']
    assert data['share/posenet_ros'] == ['package.xml']
    for folder, pattern in (('launch', '*.launch.py'), ('config', '*.yaml'), ('config', '*.rviz')):
        expected = sorted(str(p.relative_to(ROOT)) for p in (ROOT / folder).glob(pattern))
        assert expected, f'{folder}/ has no {pattern}'
        installed = data[f'share/posenet_ros/{folder}']
        assert set(expected) <= set(installed)
    assert 'share/posenet_ros/models' in data
    for exported in (ROOT / 'models').glob('*.ts'):
        assert str(exported.relative_to(ROOT)) in data['share/posenet_ros/models']
    scripts = info['entry_points']['console_scripts']
    assert any(s.startswith('relocalize_node = ') for s in scripts)
    assert any(s.startswith('posenet-ros = ') for s in scripts)
    # setup.py is valid Python that ament_python can parse
    ast.parse((ROOT / 'setup.py').read_text())


def test_rviz_config_shows_topics_the_node_publishes():
    """config/posenet.rviz loads as YAML and every topic it shows exists (node or SLAM stack)."""
    import re

    import yaml

    view = yaml.safe_load((ROOT / 'config' / 'posenet.rviz').read_text())
    manager = view['Visualization Manager']
    assert manager['Global Options']['Fixed Frame'] == 'map'
    displays = manager['Displays']
    from helpers_docs import node_source_text

    node_src = node_source_text()  # the node module and the posenet_ros modules it imports
    published = set(re.findall(r"create_publisher\([^,]+,\s*'~/(\w+)'", node_src))
    assert {'pose', 'base_pose_with_covariance', 'verified_pose'} <= published
    shown = []
    for d in displays:
        assert d['Class'].startswith('rviz_default_plugins/'), d['Class']
        topic = (d.get('Topic') or {}).get('Value')
        if topic is None:
            continue
        shown.append(topic)
        if topic.startswith('/posenet_relocalizer/'):
            assert topic.split('/')[-1] in published, topic
    from posenet_ros.ros.params import defaults

    assert defaults()['initial_pose_topic'] in shown
    assert '/posenet_relocalizer/base_pose_with_covariance' in shown and '/map' in shown
