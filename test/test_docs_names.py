"""README.md and docs/*.md name only what exists: parameters, topics, diagnostics keys, flags.

Every name the documentation gives a user is checked against the code it names, read from the
code itself so a new parameter, topic or flag is picked up without touching this file:

* node parameters against ``posenet_ros/ros/params.py`` (``SPECS``), launch arguments against
  ``launch/relocalize.launch.py`` (``ARGUMENTS``);
* the node's topics and services against the ``create_publisher`` / ``create_subscription`` /
  ``create_service`` calls in its sources (``posenet_ros/ros/relocalize_node.py`` and the
  posenet_ros modules it imports);
* diagnostics keys against ``NodeStats().snapshot()`` plus the keys and rejection reasons the
  node adds in those sources;
* ``posenet-ros <command> --flag``, ``python -m posenet_ros.<module> --flag`` and
  ``scripts/<script>.py --flag`` against that command's own argparse parser, captured by running
  its ``main`` with ``parse_args`` patched to stop before anything else happens;
* any other ``snake_case`` name in inline code against the words of the package's code and
  configuration (so a made-up name is caught even where its kind is not obvious);
* ``make <target>`` against the Makefile, relative links and their ``#anchors`` against the files
  and headings they point to, and ``README "<section>"`` citations in the repository's files
  against the README's headings.

Where names are read: fenced code blocks (backslash continuations joined; ``yaml`` blocks parsed,
and checked when they configure this node), inline code spans, and the first column of the
interface, diagnostics, parameter and launch-argument tables.

What the code has, and how markdown is read, is in ``helpers_docs.py``; the checks are here.
Names that are deliberately not ours (other tools' flags and parameters) are allow-listed below,
each with the reason.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from helpers_docs import (
    NODE_MODULE,
    NODE_NAME,
    ROOT,
    Block,
    all_flags,
    anchors,
    blocks,
    code_lines,
    code_words,
    diagnostics_keys,
    headings,
    inline_spans,
    interface_name_ok,
    launch_args,
    make_targets,
    module_parser,
    node_interface,
    node_params,
    param_choices,
    parser_flags,
    reject_reasons,
    script_parser,
)

from posenet_ros import cli
from posenet_ros.ros import params as P


def doc_files() -> list[Path]:
    return [ROOT / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))


# --- allow-lists: names that are deliberately not ours -------------------------------------------
# Parameters every rclpy node has (declared by rclpy, not by params.py).
ROS_BUILTIN_PARAMS = {'use_sim_time'}

# Command-line arguments of rcl itself (after --ros-args), accepted by every ROS 2 node.
ROS_CLI_FLAGS = {'--ros-args', '--params-file', '--log-level', '-p', '--param', '-r', '--remap',
                 '-e', '--enclave', '--disable-rosout-logs', '--disable-stdout-logs'}

# Flags written on their own in inline code that belong to other tools.
FOREIGN_FLAGS = {
    '--system-site-packages': 'python3 -m venv: lets the venv see the apt-installed rclpy',
    '-a': "evo_ape's trajectory alignment, named to say why the evo tutorial does not use it",
}

# snake_case names in inline code that are other software's (not found in our code on purpose).
FOREIGN_NAMES = {
    'pose0_config': 'robot_localization parameter: which fields of pose0 are fused',
    'odom_frame_id': 'Nav2 AMCL parameter our odom_frame must match',
    'global_frame_id': 'Nav2 AMCL parameter our map frame must match',
}


_USED_ALLOWED: set[str] = set()  # allow-list entries the docs needed (each must be needed)


def _allowed(name: str, allow_list: dict) -> bool:
    if name in allow_list:
        _USED_ALLOWED.add(name)
        return True
    return False



# --- the checks ----------------------------------------------------------------------------------
_FLAG_RE = re.compile(r'(?<![\w<>/.:-])(--?[A-Za-z][\w-]*)')
_END_RE = re.compile(r'\s#|;|&&|\|\||\s\|\s|`')
_SNAKE_RE = re.compile(r'[a-z][a-z0-9]*(?:_[a-z0-9]+)+')
_DIAG_SHAPED_RE = re.compile(r'(?:frames|rejected)_[\w<>]+')


def _tail(code: str, pos: int) -> str:
    m = _END_RE.search(code, pos)
    return code[pos:m.start() if m else len(code)]


def _check_flags(where, tail, parser, what, report):
    ros = False
    words = tail.split()
    accepted = parser_flags(parser, words) if parser is not None else set()
    for flag in _FLAG_RE.findall(tail):
        if flag == '--ros-args':
            ros = True
        if ros:
            if flag not in ROS_CLI_FLAGS:
                report(where, f'{flag} is not a ROS 2 command-line argument')
        elif flag not in accepted:
            report(where, f'{what} does not accept {flag}')


def check_code(where, code: str, report, standalone: bool = False) -> None:
    """Commands, flags and ``name:=value`` arguments in one line or inline span of code."""
    found = False
    for m in re.finditer(r'(?<![\w/.-])posenet-ros(?:\s+([^\s\]`\'")]+))?', code):
        found = True
        cmd = (m.group(1) or '').rstrip('.,:;')
        if not cmd or cmd.startswith(('-', '<', '.', '#')) or not cmd[0].isalpha():
            continue
        if cmd not in cli.COMMANDS:
            report(where, f'posenet-ros has no command {cmd!r}')
            continue
        _check_flags(where, _tail(code, m.end()), module_parser(cli.COMMANDS[cmd][0]),
                     f'posenet-ros {cmd}', report)
    for m in re.finditer(r'(?<![\w-])-m\s+(posenet_ros(?:\.\w+)*)', code):
        found = True
        module = m.group(1)
        tail = _tail(code, m.end())
        if module == NODE_MODULE:
            _check_flags(where, tail, None, module, report)  # only ROS arguments
        elif module in {mod for mod, _ in cli.COMMANDS.values()}:
            _check_flags(where, tail, module_parser(module), module, report)
        elif importlib.util.find_spec(module) is None:
            report(where, f'no module {module}')
    for m in re.finditer(r'(?<![\w/.-])(scripts/[\w.-]+)', code):
        found = True
        path = m.group(1)
        if not (ROOT / path).is_file():
            report(where, f'no file {path}')
        elif path.endswith('.py'):
            parser = script_parser(path)
            if parser is not None:
                _check_flags(where, _tail(code, m.end()), parser, path, report)
    for m in re.finditer(r'(?:ros2\s+run\s+posenet_ros\s+|(?<![\w/.-]))relocalize_node\b', code):
        if code[m.end():m.end() + 1] in ('.', '/'):
            continue
        found = True
        _check_flags(where, _tail(code, m.end()), None, 'relocalize_node', report)
    for m in re.finditer(r'(?<![\w-])make\s+([a-z][\w-]*)', code):
        if m.group(1) not in make_targets():
            report(where, f'the Makefile has no target {m.group(1)!r}')
    # parameters: -p name:=value, launch arguments: name:=value
    for m in re.finditer(r'(?<![\w-])-p\s+(\w+):=', code):
        if m.group(1) not in node_params() | ROS_BUILTIN_PARAMS:
            report(where, f'-p {m.group(1)}: the node has no such parameter')
    launch = re.search(r'ros2\s+launch\s+(\S+)', code)
    if (launch and launch.group(1) == 'posenet_ros') or (not launch and standalone):
        start = launch.end() if launch else 0
        for m in re.finditer(r'(?:^|\s)(\w+):=', _tail(code, start)):
            pre = code[max(0, start + m.start() - 3):start + m.start() + 1]
            if '-p' in pre or '-r' in pre or m.group(1).startswith('__'):
                continue
            if m.group(1) not in launch_args():
                report(where, f'{m.group(1)}:= is not an argument of relocalize.launch.py')
    for m in re.finditer(r'ros2\s+param\s+(?:get|set|describe)\s+\S*' + NODE_NAME + r'\s+(\w+)',
                         code):
        if m.group(1) not in node_params() | ROS_BUILTIN_PARAMS:
            report(where, f'ros2 param ... {m.group(1)}: the node has no such parameter')
    for m in re.finditer(r'/' + NODE_NAME + r'/([\w/]+)', code):
        if f'~/{m.group(1)}' not in node_interface():
            report(where, f'the node has no topic or service ~/{m.group(1)}')
    if standalone and not found and code.startswith('-'):
        for flag in _FLAG_RE.findall(code):
            if flag not in all_flags() and not _allowed(flag, FOREIGN_FLAGS):
                report(where, f'{flag}: no posenet_ros command or script accepts it')


def _known_name(name: str) -> bool:
    return (name in node_params() or name in launch_args() or name in diagnostics_keys()
            or name in param_choices() or name in reject_reasons() or name in ROS_BUILTIN_PARAMS
            or interface_name_ok(name))


def check_span(where, span: str, block: Block, report) -> None:
    """Names in one inline code span."""
    check_code(where, span, report, standalone=True)
    if re.match(r'~/\w', span) and span not in node_interface():
        report(where, f'the node has no topic or service {span}')
    m = re.fullmatch(r'(\w+): (\S.*)', span)  # `tf_mode: none`
    key = m.group(1) if m else span
    if m and key in node_params() and P.SPECS[key].choices:
        for value in re.split(r'[/|]', m.group(2)):
            if value not in P.SPECS[key].choices:
                report(where, f'{key}: {value!r} is not one of {", ".join(P.SPECS[key].choices)}')
    names = [key] if _SNAKE_RE.fullmatch(key) else []
    names += re.findall(r'<([a-z]\w*)>', span)  # <image_topic>/compressed
    suffix = P.SPECS['tf_child_suffix'].default  # example frames like camera_optical_posenet
    for name in names:
        stem = name.removesuffix(suffix)
        if stem not in code_words() and not _allowed(name, FOREIGN_NAMES):
            report(where, f'{name!r} is not a name in this package (parameter, key, flag...)')
    if _DIAG_SHAPED_RE.fullmatch(span) and span not in diagnostics_keys():
        report(where, f'{span!r} is not a diagnostics key')
    # in a sentence about diagnostics, a bare name must be a key (or another name of the node)
    if (re.search(r'diagnostics', block.text, re.I) and not block.table_header
            and re.fullmatch(r'[A-Za-z_][\w<>]*(?: [\w<>]+)*', span)
            and ' ' in span and not _known_name(span)):
        report(where, f'{span!r} is not a diagnostics key (nor a parameter, topic...)')


def check_table_row(block: Block, report) -> None:
    header = block.table_header
    if not header or header == '(header)':
        return
    cells = [c.strip() for c in block.text.strip().strip('|').split('|')]
    first = re.findall(r'`([^`]+)`', re.sub(r'\([^)]*\)', '', cells[0]))  # not `(values)`
    where = block.line
    if header in ('Interface', 'Topic', 'Service'):
        for name in first:
            if not interface_name_ok(name):
                report(where, f'{name} in the interface table: the node creates no such topic, '
                              'service or *_topic parameter')
    elif header == 'Key' and 'iagnostics' in block.heading:
        for name in first:
            if name not in diagnostics_keys():
                report(where, f'{name!r} is not a diagnostics key')
        if any('<reason>' in n for n in first):
            for reason in re.findall(r'`(\w+)`', ' '.join(cells[1:])):
                if reason not in reject_reasons():
                    report(where, f'{reason!r} is not a rejection reason of the node')
    elif header == 'Name' and block.heading == 'Parameters':
        for name in first:
            if name not in node_params():
                report(where, f'{name!r} is not a node parameter')
    elif header == 'Argument' and 'aunch' in block.heading:
        for name in first:
            if name not in launch_args():
                report(where, f'{name!r} is not a launch argument')


def check_yaml(where, text: str, report) -> None:
    """A params YAML for our node: every key under ros__parameters is a parameter."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return
    if not isinstance(doc, dict):
        return
    for node, body in doc.items():
        ours = str(node) in ('/**', NODE_NAME) or str(node).endswith('/' + NODE_NAME)
        if ours and isinstance(body, dict):
            for key in body.get('ros__parameters') or {}:
                if key not in node_params() | ROS_BUILTIN_PARAMS:
                    m = re.search(rf'^\s*{re.escape(str(key))}\s*:', text, re.M)
                    line = where + (text.count('\n', 0, m.start()) if m else 0)
                    report(line, f'{key}: the node has no such parameter')


def check_links(text: str, base: Path, report) -> None:
    """Relative markdown links point to existing files, and their ``#fragment`` to a heading."""
    for m in re.finditer(r'\]\(([^)\s]+)\)', text):
        target = m.group(1)
        if re.match(r'[a-z]+:', target):
            continue  # https:, mailto:
        where = text.count('\n', 0, m.start()) + 1
        path, _, fragment = target.partition('#')
        file = (base / path).resolve()
        if path and not file.exists():
            report(where, f'link to {path}: no such file')
        elif fragment and (not path or file.suffix == '.md'):
            heads = anchors(file.read_text() if path else text)
            if fragment not in heads:
                report(where, f'link to #{fragment}: no such heading in {path or "this file"}')


def check_text(text: str, name: str = '<text>') -> list[str]:
    """Every problem found in one markdown document, as ``name:line: message``."""
    problems: list[str] = []

    def report(line, message):
        problems.append(f'{name}:{line}: {message}')

    check_links(text, (ROOT / name).parent, report)
    for block in blocks(text):
        if block.fenced:
            if block.lang in ('yaml', 'yml'):
                check_yaml(block.line, block.text, report)
            else:
                for line, code in code_lines(block):
                    check_code(line, code, report)
            continue
        check_table_row(block, report)
        for line, span in inline_spans(block):
            check_span(line, span, block, report)
    return problems


# --- tests ---------------------------------------------------------------------------------------
def test_docs_name_only_what_exists():
    problems = [p for f in doc_files()
                for p in check_text(f.read_text(), str(f.relative_to(ROOT)))]
    assert not problems, 'the documentation names things that do not exist:\n' + '\n'.join(
        problems)
    unused = (set(FOREIGN_FLAGS) | set(FOREIGN_NAMES)) - _USED_ALLOWED
    assert not unused, f'allow-list entries no document needs (remove them): {sorted(unused)}'


def test_files_cite_readme_sections_that_exist():
    readme = set(headings((ROOT / 'README.md').read_text()))
    files = [*ROOT.glob('requirements/*'), *ROOT.glob('config/*'), *ROOT.glob('docs/*.md'),
             *ROOT.glob('posenet_ros/**/*.py'), *ROOT.glob('scripts/*'), *ROOT.glob('launch/*'),
             ROOT / 'package.xml', ROOT / 'Makefile', ROOT / 'setup.py']
    cited = 0
    for f in files:
        for title in re.findall(r'README[,:]?\s+(?:section\s+)?"([^"]+)"', f.read_text()):
            cited += 1
            assert title in readme, f'{f.relative_to(ROOT)} cites README "{title}": no such ' \
                                      'section'
    assert cited, 'no README citation found: is the pattern still right?'


def test_citation_version_is_the_package_version():
    version = re.search(r'<version>([^<]+)</version>', (ROOT / 'package.xml').read_text())
    cited = re.findall(r'version\s*=\s*\{([^}]+)\}', (ROOT / 'README.md').read_text())
    assert cited == [version.group(1)]


def test_every_command_parser_is_captured():
    for module, _ in cli.COMMANDS.values():
        assert '--help' in module_parser(module)._option_string_actions, module
    assert '--device' in script_parser('scripts/bench_node_latency.py')._option_string_actions
    assert '--model' in parser_flags(module_parser('posenet_ros.tools.studies'), ['robustness'])


@pytest.mark.parametrize('snippet, expected', [
    ('```bash\nrelocalize_node --ros-args -p bogus_param:=1\n```', '-p bogus_param'),
    ('Set `-p model_path:=m.ts -p made_up:=2`.', '-p made_up'),
    ('```bash\nposenet-ros train --dataset d \\\n    --bogus-flag 3\n```', 'accept --bogus-flag'),
    ('Run `posenet-ros evaluate --model m.ts --no-such-flag`.', 'accept --no-such-flag'),
    ('```bash\nposenet-ros study robustness --sizes 10\n```', 'accept --sizes'),
    ('```bash\npython -m posenet_ros.training.train --epochz 3\n```', 'accept --epochz'),
    ('```bash\npython scripts/bench_node_latency.py --gpu\n```', 'accept --gpu'),
    ('```bash\nposenet-ros frobnicate --x\n```', "no command 'frobnicate'"),
    ('Train with `--freeze-bn --no-augmentation`.', '--no-augmentation: no posenet_ros'),
    ('```bash\nros2 launch posenet_ros relocalize.launch.py modle:=m.ts\n```', 'modle:='),
    ('Covariance from `initial_pose_covariance`.', "'initial_pose_covariance' is not a name"),
    ('Check `/diagnostics`: `frames in` 0 means nothing arrives.', "'frames in' is not a diag"),
    ('Counted as `frames_lost`.', "'frames_lost' is not a diagnostics key"),
    ('Call `~/relocalise` when lost.', 'no topic or service ~/relocalise'),
    ('```bash\nros2 service call /posenet_relocalizer/reset std_srvs/srv/Trigger\n```',
     '~/reset'),
    ('Set `tf_mode: base`.', "'base' is not one of"),
    ('```yaml\n/**:\n  ros__parameters:\n    max_imag_age: 1.0\n```', 'max_imag_age'),
    ('| Interface | Type |\n| --- | --- |\n| `~/posee` | x |\n', '~/posee'),
    ('## Diagnostics\n\n| Key | Meaning |\n| --- | --- |\n| `frames_in` | x |\n',
     "'frames_in' is not a diagnostics key"),
    ('## Diagnostics\n\n| Key | Meaning |\n| --- | --- |\n'
     '| `rejected_<reason>` | per reason: `conversion`, `bad_luck` |\n', "'bad_luck' is not a"),
    ('Run `make demos`.', "no target 'demos'"),
    ('See [the node](docs/node.md#no-such-section).', 'no such heading in docs/node.md'),
    ('See [the node](docs/nodes.md).', 'no such file'),
    ('## Real heading\n\nSee [above](#real-headin).', 'no such heading in this file'),
])
def test_a_made_up_name_is_reported(snippet, expected):
    problems = check_text(snippet)
    assert any(expected in p for p in problems), problems


def test_real_names_pass():
    snippet = (
        '```bash\nrelocalize_node --ros-args --params-file config/relocalize.yaml '
        '-p model_path:=m.ts -p use_sim_time:=true -r __ns:=/robot1\n'
        'ros2 launch posenet_ros relocalize.launch.py model:=m.ts fastdds_shm:=true\n'
        'posenet-ros study robustness --model m.ts --dataset d --out o  # --limit 3\n'
        'python scripts/bench_node_latency.py --device cuda --backbone googlenet\n'
        'ros2 bag record /camera/image_raw/compressed --storage mcap\n'
        'evo_ape tum a.tum b.tum -v --plot\n```\n\n'
        'Check `/diagnostics`: `frames_received`, `rejected_<reason>`, `tf_mode: none`, '
        '`~/pose`, `initial_pose_topic`, `--freeze-bn --no-augment`, `posenet-ros demo --force`.\n'
        '\n```yaml\namcl:\n  ros__parameters:\n    set_initial_pose: false\n```\n')
    assert check_text(snippet) == []
