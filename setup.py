"""ament_python package definition of posenet_ros (also installable with plain pip)."""

from glob import glob

from setuptools import find_packages, setup

package_name = 'posenet_ros'


def _files(pattern):
    # data_files does not recurse: list each installed folder's files explicitly.
    return sorted(path for path in glob(pattern) if not path.endswith('.gitkeep'))


setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(include=['posenet_ros', 'posenet_ros.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', _files('launch/*.launch.py')),
        ('share/' + package_name + '/config', _files('config/*.yaml') + _files('config/*.xml')
         + _files('config/*.rviz')),
        # each model with its scene map (<stem>.map.npz): refine: request needs both
        ('share/' + package_name + '/models', _files('models/*.ts') + _files('models/*.pt2')
         + _files('models/*.map.npz') + _files('models/*.md')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='posenet_ros maintainers',
    maintainer_email='posenet-ros@example.com',
    description='Real-time monocular camera relocalization with PoseNet for ROS 2',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'posenet-ros = posenet_ros.cli:main',
            'relocalize_node = posenet_ros.ros.relocalize_node:main',
            'relocalize_lifecycle_node = posenet_ros.ros.node_lifecycle:main',
        ],
    },
)
