"""The three journeys of docs/tutorials.md, run as written on robot-like synthetic bags.

The journeys' code blocks are marked in docs/tutorials.md by an HTML comment right before the
fence (``<!-- journey: NAME -->``, invisible on GitHub). This file parses those blocks (backslash
continuations joined, ``#`` comments stripped), substitutes only the user's placeholders and runs
each command in one temporary working directory, in the page's order, so the relative paths the
tutorials use (``data/my_scene``, ``models/my_scene.ts``, ``reports/my_scene``) chain the
journeys:

1. ``train-on-bag`` ("Train on your own scene"): record -> extract-bag -> train -> map.
2. ``next-to-amcl`` ("Next to Nav2 AMCL or a SLAM stack", namespaced robots): the params file
   is written from the tutorial's yaml block, the node is started with the tutorial's pip
   command line, the ``~/relocalize`` call is made, and the hint must arrive on
   ``/robot1/initialpose`` as the BASE pose in ``map``, checked against the bag's
   ``/ground_truth/base_pose``.
3. ``evaluate-bag`` ("Evaluate a bag with evo"): the evaluation of a replayed bag with ground
   truth from TF, checked against the bag's ``/ground_truth/pose``.

The "robot": ``ros2 bag record`` cannot run here, so the synthetic scene's bags, recorded with the
robot profile (``posenet_ros.tools.synthetic.robot_bag``), stand for the recordings (``my_bag``:
the training laps, ``test_bag``: the test laps between them): 15 Hz JPEG images on
``/camera/color/image_raw/compressed`` with camera_info, wheel odometry ``odom ->
base_footprint`` at 50 Hz drifting against the map, AMCL's ``map -> odom`` once per 5 Hz scan
future-dated by 1.0 s, ``/amcl_pose`` on filter updates, and the mount ``base_footprint ->
base_link -> camera_link -> camera_color_optical_frame`` on /tf_static.

What is changed, and nothing else (the test fails on any command it neither runs nor lists in
:data:`RULES`, so the tutorials cannot drift away from what is tested):

* placeholders (:data:`PLACEHOLDERS`): ``my_bag``, ``test_bag``, ``/path/to/scene.ts``;
* ``posenet-ros`` runs as ``python -m posenet_ros.cli``, ``relocalize_node`` as the venv's
  console script (``python -m posenet_ros.ros.relocalize_node`` where there is none);
* the training is sized for a CPU test: :data:`TRAIN_OVERRIDES` are appended to the
  tutorial's train command (argparse: the last value of a flag wins), i.e. the CPU demo recipe
  ``config/train_demo_cpu.yaml`` at 64/56 px for a few epochs on the CPU with one thread and no
  ``.pt2`` export (a ``--time-budget`` in the tutorial's command stays; the epochs bound it);
* the node: ``-p use_sim_time:=true`` (the robot is a replayed bag: the player publishes
  ``/clock`` with the bag time, as the tutorial says for trying it on a bag, so
  ``max_image_age`` and ``relocalize_timeout`` measure bag time) and ``-p num_threads:=1`` (a
  shared 2-core machine);
* commands that cannot run here are listed in :data:`RULES` with the reason; ``ros2 service
  call`` is replaced by an rclpy client making the same call on the service the tutorial
  names.

Journey 2 keeps the node's default ``refine: request``: the hint is sent only from a pose
verified against the scene map that journey 1 builds (``posenet-ros map``). A briefly
CPU-trained model is coarse (metres), but verification is what makes the hint trustworthy and
is what a user following the tutorial gets; ``refine: off`` would test a path the journey does
not take. So the hint must be within a few centimetres and 1 deg (yaw) of the TRUE base pose,
and equal to the answer's camera pose composed with the bag's /tf_static mount: both fail if the
node sent the camera pose (the camera is 1.1 m above and 0.2 m ahead of base_footprint), or a
pose through a wrong extrinsic. The tutorial's params set ``continuous: false``, so the node
runs the network only for the call and for supervision's verified frames. If the tiny model
ever fails to verify, the call answers ``success: false`` and this test fails with the node's
reason. Journey 2's params file also turns supervision on (``recovery: auto``): next to the
bag's localizer (its ``map -> odom`` is right) the node must report it ``localized`` and send
nothing by itself.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers_slow import slow_fixture
from ros_helpers import ROOT, ros_env

TUTORIALS = ROOT / 'docs' / 'tutorials.md'
JOURNEYS = ('train-on-bag', 'next-to-amcl', 'evaluate-bag')
N_TRAIN, N_TEST = 72, 24  # frames of the synthetic recordings (320x240, 15 Hz)
IMAGE_TOPIC = '/camera/color/image_raw/compressed'
# The label of an image composes map -> odom and odometry interpolated at its stamp: within a
# few mm of the truth on the synthetic rig's fast drive (a metre between 15 Hz frames).
LABEL_TOLERANCE = 0.025  # m

# The user's placeholders -> what stands for them here (relative paths live in the work dir).
PLACEHOLDERS = {
    'train-on-bag': {'my_bag': '{my_bag}'},
    'next-to-amcl': {'/path/to/scene.ts': 'models/my_scene.ts'},
    'evaluate-bag': {'test_bag': '{test_bag}'},
}

# CPU-sized training, appended to the tutorial's `posenet-ros train` command.
TRAIN_OVERRIDES = ['--config', str(ROOT / 'config' / 'train_demo_cpu.yaml'), '--device', 'cpu',
                   '--epochs', '20', '--resize', '64', '--crop', '56', '--batch-size', '16',
                   '--num-threads', '1', '--no-export-pt2', '--no-progress']
NODE_OVERRIDES = ['-p', 'use_sim_time:=true', '-p', 'num_threads:=1']

# How each command of a journey block is handled, by its leading words: (action, reason).
RULES = {
    ('posenet-ros',): ('run', 'as python -m posenet_ros.cli'),
    ('relocalize_node',): ('run', "the venv's console script, in the background"),
    ('ros2', 'service', 'call'): ('replaced', 'ros2cli is not on PyPI: an rclpy client makes '
                                  'the same call on the same service'),
    ('ros2', 'bag', 'record'): ('listed', 'needs a robot (and rosbag2_py, not on PyPI): the '
                                "synthetic scene's bag stands for the recording"),
    ('ros2', 'launch'): ('listed', "launch_ros is not on PyPI: the block's pip line starts the "
                         'same node (the launch file is checked in test_launch.py)'),
    ('pip', 'install', 'evo'): ('listed', 'the tests install nothing; evo_ape runs when evo is '
                                'already installed'),
    ('evo_ape',): ('run-if-installed', 'evo is not installed by make setup'),
}

_MARK = re.compile(r'^\s*<!-- journey: ([\w-]+) -->\s*$')
_FENCE = re.compile(r'^(\s*)```(\w*)\s*$')


# --- reading the tutorials -------------------------------------------------------------------
def journey_blocks(text: str | None = None) -> dict[str, list[tuple[str, str]]]:
    """``{journey: [(language, code), ...]}`` of the marked fenced blocks, in the page's order."""
    lines = (TUTORIALS.read_text() if text is None else text).splitlines()
    out: dict[str, list[tuple[str, str]]] = {}
    i = 0
    while i < len(lines):
        m = _MARK.match(lines[i])
        if not m:
            i += 1
            continue
        fence = _FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        assert fence, f'line {i + 1}: a journey marker must stand right before a fence'
        indent, body, i = len(fence.group(1)), [], i + 2
        while not lines[i].strip().startswith('```'):
            body.append(lines[i][indent:])
            i += 1
        out.setdefault(m.group(1), []).append((fence.group(2), '\n'.join(body)))
        i += 1
    return out


def commands(code: str) -> list[list[str]]:
    """The commands of a shell block: continuations joined, comments stripped, split."""
    joined = re.sub(r'\\\n', ' ', code)
    return [argv for line in joined.splitlines()
            if (argv := shlex.split(line, comments=True))]


def rule_of(argv: list[str]) -> tuple[str, ...] | None:
    """The key of :data:`RULES` matching ``argv``'s leading words (None: not covered)."""
    keys = [k for k in RULES if tuple(argv[:len(k)]) == k]
    return max(keys, key=len) if keys else None


def journey_commands(name: str) -> list[list[str]]:
    """Every shell command of journey ``name``, in the page's order."""
    return [argv for lang, code in journey_blocks()[name] if lang == 'bash'
            for argv in commands(code)]


def substitute(name: str, argv: list[str], values: dict[str, str]) -> list[str]:
    """``argv`` with journey ``name``'s placeholders replaced.

    A placeholder is a whole word, or the whole value of a ``key:=value`` / ``key=value`` word.
    """
    table = {k: v.format(**values) for k, v in PLACEHOLDERS[name].items()}

    def one(word):
        key, sep, value = word.rpartition(':=') if ':=' in word else word.rpartition('=')
        return key + sep + table[value] if sep and value in table else table.get(word, word)

    return [one(a) for a in argv]


def _words(argv: list[str]) -> set[str]:
    """The words of ``argv`` and the values of its ``key:=value`` / ``key=value`` words."""
    return {w for a in argv for w in (a, a.rpartition(':=')[2], a.rpartition('=')[2])}


def executable(argv: list[str]) -> list[str]:
    """How ``argv`` is run here (``posenet-ros`` -> the CLI module, etc.)."""
    if argv[0] == 'posenet-ros':
        return [sys.executable, '-m', 'posenet_ros.cli', *argv[1:]]
    if argv[0] == 'relocalize_node':
        script = Path(sys.executable).parent / 'relocalize_node'
        head = [str(script)] if script.is_file() else [sys.executable, '-m',
                                                        'posenet_ros.ros.relocalize_node']
        return head + argv[1:]
    return argv


# --- the "robot's" recordings and running commands -------------------------------------------
def _env() -> dict:
    return ros_env(int(os.environ.get('ROS_DOMAIN_ID', '0')), os.environ['ROS_LOG_DIR'])


def run(argv: list[str], cwd: Path) -> str:
    """Run one tutorial command in ``cwd``; its output (the test fails on a non-zero exit)."""
    out = subprocess.run(executable(argv), cwd=cwd, env=_env(), capture_output=True, text=True,
                         timeout=900)
    text = out.stdout + out.stderr
    assert out.returncode == 0, f'{shlex.join(argv)} exited {out.returncode}:\n{text[-4000:]}'
    return text


def _bag_truth(bag: Path, topic: str) -> dict[int, np.ndarray]:
    """``{stamp ns: 4x4 pose}`` of a PoseStamped topic of ``bag``."""
    from rosbags.highlevel import AnyReader

    from posenet_ros.core import geometry

    out = {}
    with AnyReader([bag]) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        for conn, _, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            p, q = msg.pose.position, msg.pose.orientation
            out[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec] = geometry.pose_to_matrix(
                [p.x, p.y, p.z], geometry.xyzw_to_wxyz([q.x, q.y, q.z, q.w]))
    return out


def _at(truth: dict[int, np.ndarray], t: float) -> np.ndarray:
    """The pose of ``truth`` stamped within 1 ms of ``t`` (seconds)."""
    key = min(truth, key=lambda k: abs(k - t * 1e9))
    assert abs(key - t * 1e9) < 1e6, (t, key)
    return truth[key]


@slow_fixture(scope='module')
def workdir(tmp_path_factory):
    """The user's working directory, and the recordings standing for the robot's bags."""
    from posenet_ros.tools.synthetic import SceneConfig, write_bag

    root = tmp_path_factory.mktemp('journeys')
    cfg = SceneConfig(seed=0, n_train=N_TRAIN, n_test=N_TEST)
    bags = root / 'recordings'
    values = {
        'my_bag': str(write_bag(bags / 'my_bag', cfg, which='train', progress=False,
                                profile='robot')),
        'test_bag': str(write_bag(bags / 'test_bag', cfg, which='test', progress=False,
                                  profile='robot')),
    }
    work = root / 'work'
    work.mkdir()
    return {'dir': work, 'values': values, 'logs': {}}


def _walk(name: str, workdir: dict) -> dict[str, str]:
    """Run journey ``name``'s shell commands (rule 'run'); ``{command: output}``."""
    outputs = {}
    for argv in journey_commands(name):
        action, _ = RULES[rule_of(argv)]
        if action == 'run-if-installed' and shutil.which(argv[0]) is None:
            continue
        if action not in ('run', 'run-if-installed'):
            continue
        argv = substitute(name, argv, workdir['values'])
        if argv[:2] == ['posenet-ros', 'train']:
            argv = argv + TRAIN_OVERRIDES
        outputs[shlex.join(argv)] = run(argv, workdir['dir'])
    return outputs


@pytest.fixture(scope='module')
def trained(workdir):
    """Journey 1 walked: ``(workdir, {command: output})``."""
    return workdir, _walk('train-on-bag', workdir)


# --- the blocks are covered ------------------------------------------------------------------
def test_every_journey_command_is_run_or_listed():
    blocks = journey_blocks()
    assert set(blocks) == set(JOURNEYS), f'marked journeys: {sorted(blocks)}'
    used = set()
    for name in JOURNEYS:
        argvs = journey_commands(name)
        assert argvs, f'journey {name} has no shell command'
        for argv in argvs:
            key = rule_of(argv)
            assert key is not None, (
                f'journey {name}: {shlex.join(argv)!r} is neither run nor listed in '
                'test_journeys.RULES; run it, or list it with the reason it cannot run here')
            used.add(key)
        words = set().union(*map(_words, argvs))
        for placeholder in PLACEHOLDERS[name]:
            assert placeholder in words, f'journey {name} no longer names {placeholder!r}'
    assert used == set(RULES), f'rules no journey needs any more: {set(RULES) - used}'


def test_block_parsing():
    text = ('x\n<!-- journey: a -->\n   ```bash\n   posenet-ros map --model m.ts \\\n'
            '       --out x.npz  # a comment\n   # only a comment\n   ```\n')
    [(lang, code)] = journey_blocks(text)['a']
    assert lang == 'bash'
    assert commands(code) == [['posenet-ros', 'map', '--model', 'm.ts', '--out', 'x.npz']]
    with pytest.raises(AssertionError, match='right before a fence'):
        journey_blocks('<!-- journey: a -->\ntext\n')
    assert rule_of(['ros2', 'topic', 'echo', '/x']) is None
    values = {'my_bag': '/bags/b'}
    argv = ['-p', 'model_path:=/path/to/scene.ts', 'x/path/to/scene.ts']
    assert substitute('next-to-amcl', argv, values) == \
        ['-p', 'model_path:=models/my_scene.ts', 'x/path/to/scene.ts']
    assert substitute('train-on-bag', ['extract-bag', 'my_bag', 'my_bags'], values) == \
        ['extract-bag', '/bags/b', 'my_bags']


# --- journey 1: train on my robot's bag ------------------------------------------------------
@pytest.mark.slow
def test_train_on_bag(trained):
    from posenet_ros.datasets import load_dataset
    from posenet_ros.verify.mapfile import default_map_path

    work, outputs = trained
    cmds = list(outputs)
    assert [c.split()[1] for c in cmds] == ['extract-bag', 'train', 'map'], cmds
    d = work['dir']
    samples = load_dataset(d / 'data' / 'my_scene', 'all')
    # labels for >= 95 % of the images: only the image before AMCL's first scan has none
    assert len(samples) >= 0.95 * N_TRAIN, len(samples)
    assert 'without a pose: 1 image before the first map -> odom' in outputs[cmds[0]]
    assert all(s.split == 'train' for s in samples)  # test_bag is the test set
    # --tf map camera_color_optical_frame labels the camera optical frame: the camera truth
    truth = _bag_truth(Path(work['values']['my_bag']), '/ground_truth/pose')
    for s in samples:
        t = _at(truth, s.stamp)
        np.testing.assert_allclose(s.position, t[:3, 3], atol=LABEL_TOLERANCE)
    model = d / 'models' / 'my_scene.ts'
    assert model.is_file() and default_map_path(model).is_file()


# --- journey 2: next to Nav2 AMCL, namespaced ------------------------------------------------
def _yaw(m, axis=0):
    v = m[:3, axis]
    return math.degrees(math.atan2(v[1], v[0]))


def _dyaw(a, b):
    return abs((a - b + 180.0) % 360.0 - 180.0)


def _amcl_params(d: Path) -> str:
    """Write the params file from the tutorial's yaml block (its first line names the file).

    Returns its ``initial_pose_topic``.
    """
    [params_block] = [code for lang, code in journey_blocks()['next-to-amcl'] if lang == 'yaml']
    file_name = params_block.splitlines()[0].lstrip('# ').strip()
    (d / file_name).write_text(params_block + '\n')
    params = yaml.safe_load(params_block)['/**']['ros__parameters']
    assert params['initial_pose_topic'] == '/robot1/initialpose', params
    return params['initial_pose_topic']


def _amcl_commands(values: dict[str, str]) -> tuple[list[str], str, str]:
    """The node's command line (test overrides appended), the service it calls, the namespace."""
    argvs = journey_commands('next-to-amcl')
    [node_argv] = [a for a in argvs if RULES[rule_of(a)][0] == 'run']
    [call] = [a for a in argvs if rule_of(a) == ('ros2', 'service', 'call')]
    service, srv_type = call[3], call[4]
    assert srv_type == 'std_srvs/srv/Trigger', call
    node_argv = substitute('next-to-amcl', node_argv, values) + NODE_OVERRIDES
    ns = node_argv[node_argv.index('-r') + 1].split(':=')[1]
    assert ns == '/robot1', node_argv
    return node_argv, service, ns


@contextlib.contextmanager
def _node(session, argv: list[str], cwd: Path):
    """The node started with ``argv`` in ``cwd``; yields a function returning its log so far.

    Waits for its ready line; stops it with SIGINT (then kills it) on the way out.
    """
    log_path = cwd / 'node.log'
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(executable(argv), cwd=cwd, env=session.env(), stdout=log,
                                stderr=subprocess.STDOUT)

    def output():
        return log_path.read_text(errors='replace')

    try:
        assert session.spin_until(
            lambda: 'ready: model' in output() or proc.poll() is not None, 180), output()
        assert proc.poll() is None, output()
        yield output
        assert proc.poll() is None, output()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _relocalize_lost_robot(work: dict, initial_topic: str):
    """Start the node as the tutorial says, play the test laps, call the service once.

    Returns the service's answer, the ``/initialpose`` messages received, and the node's log.
    """
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from ros_helpers import RosSession
    from sensor_msgs.msg import CompressedImage
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from posenet_ros.ros.replay import BagPlayer

    node_argv, service, ns = _amcl_commands(work['values'])
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    initial, images, states = [], [], []
    with RosSession('posenet_journey_amcl') as s, _node(s, node_argv, work['dir']) as output:
        s.node.create_subscription(PoseWithCovarianceStamped, initial_topic, initial.append, qos)
        s.node.create_subscription(String, f'{ns}/posenet_relocalizer/supervision',
                                   lambda m: states.append(json.loads(m.data)), latched)
        s.node.create_subscription(CompressedImage, IMAGE_TOPIC, images.append,
                                   qos_profile_sensor_data)
        client = s.node.create_client(Trigger, service)
        assert client.wait_for_service(timeout_sec=60), f'no service {service}\n{output()}'
        # The robot: the test laps' images, camera_info and TF tree, with the bag's /clock.
        player = BagPlayer(s.node, Path(work['values']['test_bag']), topics=[
            IMAGE_TOPIC, '/camera/color/camera_info', '/tf', '/tf_static'],
            rate=0.25, clock=True)
        thread = threading.Thread(target=lambda: player.play(wait=30.0, every_topic=True),
                                  daemon=True)
        thread.start()
        # recovery: auto watches the bag's localizer (its map -> odom is right): it agrees
        assert s.spin_until(lambda: images and states and states[-1]['state'] == 'localized',
                            120), (states[-1:], output()[-3000:])
        # ... and sends nothing; the hint below is the service's. The robot is lost: ask.
        future = client.call_async(Trigger.Request())
        assert s.spin_until(future.done, 120), output()[-3000:]
        answer = future.result()
        assert s.spin_until(lambda: initial or not answer.success, 30)
        s.spin_until(lambda: not thread.is_alive(), 60)
        player.close()
    assert states[-1]['inits_sent'] == states[-1]['reinits_sent'] == 0, states[-1]
    return answer, initial, output()


def _check_hint(answer, initial: list, test_bag: Path, log: str) -> None:
    """The hint is the verified BASE pose in map, once, at the answer's stamp."""
    from posenet_ros.core import geometry
    from posenet_ros.tools.synthetic.robot_bag import T_FOOTPRINT_CAM

    assert answer.success, f'{answer.message}\n{log[-3000:]}'
    info = json.loads(answer.message)
    assert info['verified'] and info['extrinsic_source'] == 'tf', info
    assert len(initial) == 1, initial  # once per call: every message resets AMCL
    msg = initial[0]
    key = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
    assert msg.header.frame_id == 'map' and key == (info['stamp']['sec'] * 10**9
                                                    + info['stamp']['nanosec']), (msg, info)
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    hint = geometry.pose_to_matrix([p.x, p.y, p.z], geometry.xyzw_to_wxyz([q.x, q.y, q.z, q.w]))
    # The BASE pose: the answer's camera pose through the bag's /tf_static mount ...
    c = info['camera']
    t_map_cam = geometry.pose_to_matrix(c['position'],
                                        geometry.xyzw_to_wxyz(c['orientation_xyzw']))
    np.testing.assert_allclose(hint, t_map_cam @ np.linalg.inv(T_FOOTPRINT_CAM), atol=1e-5)
    # ... and so its error is the camera's (verified: millimetres), not the 1 m mount offset.
    base = _bag_truth(test_bag, '/ground_truth/base_pose')[key]
    cam = _bag_truth(test_bag, '/ground_truth/pose')[key]
    cam_err = np.linalg.norm(t_map_cam[:3, 3] - cam[:3, 3])
    base_err = np.linalg.norm(hint[:3, 3] - base[:3, 3])
    yaw_err = _dyaw(_yaw(hint), _yaw(base))
    print(f'hint vs base truth: {base_err * 100:.2f} cm, yaw {yaw_err:.3f} deg '
          f'(camera pose vs camera truth: {cam_err * 100:.2f} cm)')
    assert base_err < 0.05 and yaw_err < 1.0, (base_err, yaw_err)
    assert abs(base_err - cam_err) < 0.01, (base_err, cam_err)
    assert np.linalg.norm(hint[:3, 3] - cam[:3, 3]) > 1.0  # the camera pose: 1.1 m off


@pytest.mark.slow
@pytest.mark.ros
def test_next_to_amcl_namespaced(trained):
    pytest.importorskip('rclpy')
    pytest.importorskip('tf2_msgs.msg', reason='tf2_msgs is not built into this environment')
    work, _ = trained
    initial_topic = _amcl_params(work['dir'])
    answer, initial, log = _relocalize_lost_robot(work, initial_topic)
    _check_hint(answer, initial, Path(work['values']['test_bag']), log)


# --- journey 3: evaluate a replayed bag ------------------------------------------------------
@pytest.mark.slow
def test_evaluate_bag(trained):
    work, _ = trained
    outputs = _walk('evaluate-bag', work)
    assert [c.split()[1] for c in outputs if c.startswith('posenet-ros')] == ['evaluate']
    report = work['dir'] / 'reports' / 'my_scene'
    summary = json.loads((report / 'summary.json').read_text())
    assert summary, summary
    gt = np.loadtxt(report / 'ground_truth.tum')
    pred = np.loadtxt(report / 'prediction.tum')
    # every image has ground truth but the one before AMCL's first scan, and the report says so
    assert gt.shape == pred.shape == (N_TEST - 1, 8)
    assert any('1 image before the first map -> odom' in n for n in summary['notes']), summary
    # --map: the verified poses in their own file, the frames it leaves out counted
    verified = np.loadtxt(report / 'verified.tum', ndmin=2)
    traj = summary['trajectories']['verified']
    assert summary['trajectories']['n_frames'] == N_TEST - 1, summary['trajectories']
    assert len(verified) == traj['n_poses'] == N_TEST - 1 - traj['n_missing'] > 0, traj
    # --tf map camera_color_optical_frame: the reference is the camera's true trajectory
    truth = _bag_truth(Path(work['values']['test_bag']), '/ground_truth/pose')
    for row in gt:
        np.testing.assert_allclose(row[1:4], _at(truth, row[0])[:3, 3], atol=LABEL_TOLERANCE)
