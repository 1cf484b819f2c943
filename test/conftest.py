"""Session-wide test settings: isolation of ROS state, headless plots, bounded CPU threads."""

import os
import random
import tempfile

# Isolate every test session: own DDS domain, discovery on localhost only, own ROS log dir.
os.environ.setdefault('ROS_DOMAIN_ID', str(random.randint(1, 101)))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_LOG_DIR', tempfile.mkdtemp(prefix='posenet_ros_log_'))
os.environ.setdefault('MPLBACKEND', 'Agg')
