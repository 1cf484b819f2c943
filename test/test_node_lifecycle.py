"""The managed node's transitions, driven by a real lifecycle client over DDS.

The node (``posenet_ros.ros.node_lifecycle``) runs in its own process; this test calls
``<node>/change_state`` and ``<node>/get_state`` as ``nav2_lifecycle_manager`` would, and checks
what each state does: unconfigured and inactive nodes do not relocalize, an active one does, a
configure with a wrong model path fails and leaves the node unconfigured.
"""

from __future__ import annotations

import array

import pytest

pytest.importorskip('rclpy')
pytest.importorskip('lifecycle_msgs.srv', reason='lifecycle_msgs is not installed')

from geometry_msgs.msg import PoseStamped  # noqa: E402
from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_helpers import RosSession  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from posenet_ros.core.image_conversion import rgb_to_image_fields  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

NODE = '/lc/posenet_relocalizer'
MODULE = 'posenet_ros.ros.node_lifecycle'


def _image(rgb):
    f = rgb_to_image_fields(rgb, 'rgb8')
    msg = Image(encoding=f['encoding'], height=f['height'], width=f['width'], step=f['step'],
                is_bigendian=f['is_bigendian'])
    msg.data = array.array('B', f['data'])
    msg.header.frame_id = 'camera_optical'
    return msg


def test_lifecycle_transitions_over_dds(scene_model, tmp_path):
    from posenet_ros.tools.synthetic import make_scene, render, trajectory

    cfg = scene_model.cfg
    p, q = trajectory('test', 1, cfg.seed)[0]
    frame = render(make_scene(cfg.seed), p, q, cfg.K(), cfg.width, cfg.height)
    params = {'model_path': str(scene_model.model), 'device': 'cpu', 'num_threads': 1,
              'warmup_iterations': 1, 'max_image_age': 0.0, 'tf_mode': 'none',
              'image_topic': '/lc/camera/image_raw', 'refine': 'off'}
    with RosSession('posenet_lifecycle_client') as session:
        proc = session.start_node(params, 'lc', extra_args=('-r', '__ns:=/lc'), module=MODULE)
        bad = session.start_node({**params, 'model_path': str(tmp_path / 'missing.ts')}, 'bad',
                                 extra_args=('-r', '__ns:=/bad'), module=MODULE)
        n = session.node
        poses = []
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        n.create_subscription(PoseStamped, f'{NODE}/pose', poses.append, qos)
        image = n.create_publisher(Image, '/lc/camera/image_raw', qos)

        def state(node=NODE):
            client = n.create_client(GetState, f'{node}/get_state')
            return session.call(client, GetState.Request(), 30.0).current_state.id

        def transition(tid, node=NODE):
            client = n.create_client(ChangeState, f'{node}/change_state')
            return session.call(client, ChangeState.Request(
                transition=Transition(id=tid)), 120.0).success

        def relocalizes(tries=15):
            before = len(poses)
            for _ in range(tries):
                image.publish(_image(frame))
                if session.spin_until(lambda: len(poses) > before, 0.3):
                    return True
            return False

        # a missing model fails configure with the reason; that node stays unconfigured
        assert state('/bad/posenet_relocalizer') == State.PRIMARY_STATE_UNCONFIGURED
        assert not transition(Transition.TRANSITION_CONFIGURE, '/bad/posenet_relocalizer')
        assert state('/bad/posenet_relocalizer') == State.PRIMARY_STATE_UNCONFIGURED
        assert 'does not exist' in bad.output() and bad.alive(), bad.output()

        assert state() == State.PRIMARY_STATE_UNCONFIGURED, proc.tail(20)
        assert not relocalizes(4)  # unconfigured: nothing subscribes
        assert transition(Transition.TRANSITION_CONFIGURE), proc.tail(20)
        assert state() == State.PRIMARY_STATE_INACTIVE
        assert not relocalizes(4)  # inactive: no subscription yet
        assert transition(Transition.TRANSITION_ACTIVATE), proc.tail(20)
        assert state() == State.PRIMARY_STATE_ACTIVE
        assert relocalizes(), proc.tail(20)
        assert transition(Transition.TRANSITION_DEACTIVATE)
        assert state() == State.PRIMARY_STATE_INACTIVE
        session.spin_until(lambda: False, 0.5)
        assert not relocalizes(4)
        assert transition(Transition.TRANSITION_ACTIVATE)  # activate again after deactivate
        assert relocalizes(), proc.tail(20)
        assert transition(Transition.TRANSITION_DEACTIVATE)
        assert transition(Transition.TRANSITION_CLEANUP)
        assert state() == State.PRIMARY_STATE_UNCONFIGURED
        assert transition(Transition.TRANSITION_CONFIGURE)  # configure again after cleanup
        assert transition(Transition.TRANSITION_INACTIVE_SHUTDOWN)
        assert proc.alive(), proc.output()
        assert 'Traceback' not in proc.output(), proc.output()
