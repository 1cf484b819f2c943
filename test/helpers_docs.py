"""What the documentation checks compare against: names read from the code, and markdown read.

``test_docs_names.py`` checks every name README.md and docs/*.md give a user against this:

* node parameters from ``posenet_ros/ros/params.py`` (``SPECS``), launch arguments from
  ``launch/relocalize.launch.py`` (``ARGUMENTS``);
* the node's topics, services, rejection reasons and diagnostics keys from its sources
  (:func:`node_sources`: the node module and the posenet_ros modules it imports);
* every command's and script's argparse parser, captured by running its ``main`` with
  ``parse_args`` patched to stop before anything else happens;
* the words of the package's code and configuration, and the Makefile's targets;
* markdown split into blocks (paragraphs, list items, table rows, fenced code), inline code
  spans, logical code lines and GitHub heading anchors.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from unittest import mock

from posenet_ros import cli
from posenet_ros.ros import params as P
from posenet_ros.ros.diagnostics import NodeStats

ROOT = Path(__file__).resolve().parents[1]
NODE_MODULE = 'posenet_ros.ros.relocalize_node'
NODE_NAME = 'posenet_relocalizer'
DOCS_TEST = 'test_docs_names.py'  # names made-up names on purpose: not a source of words


@cache
def node_sources() -> tuple[Path, ...]:
    """The node module's file and those of the posenet_ros modules it imports.

    The node's topics, services, rejection reasons and diagnostics keys are read from these, so
    moving a piece of the node into a module of its own keeps them found.
    """
    origin = Path(importlib.util.find_spec(NODE_MODULE).origin)
    names = set()
    for stmt in ast.walk(ast.parse(origin.read_text())):
        if isinstance(stmt, ast.ImportFrom) and (stmt.module or '').startswith('posenet_ros'):
            names |= {stmt.module} | {f'{stmt.module}.{a.name}' for a in stmt.names}
        elif isinstance(stmt, ast.Import):
            names |= {a.name for a in stmt.names if a.name.startswith('posenet_ros')}
    files = {origin}
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:  # an imported class or function, not a module
            continue
        if spec is not None and spec.origin and spec.origin.endswith('.py'):
            files.add(Path(spec.origin))
    return tuple(sorted(files))


@cache
def node_source_text() -> str:
    return '\n'.join(f.read_text() for f in node_sources())


# --- what the code has ---------------------------------------------------------------------------
@cache
def node_params() -> frozenset[str]:
    return frozenset(P.SPECS)


@cache
def param_choices() -> frozenset[str]:
    return frozenset(c for spec in P.PARAMS for c in spec.choices)


@cache
def launch_args() -> frozenset[str]:
    path = ROOT / 'launch' / 'relocalize.launch.py'
    spec = importlib.util.spec_from_file_location('_docs_launch', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # plain data at module level: no launch_ros needed
    return frozenset(a[0] for a in mod.ARGUMENTS)


_CREATE_RE = re.compile(
    r'create_(publisher|subscription|service)\(\s*(?:[^,()]+?)\s*,\s*([^,()]+?)\s*,')


@cache
def node_interface() -> frozenset[str]:
    """Topic and service names the node creates, as written in the source (``~/x``, ``/x``).

    A name taken from a parameter (``self._cfg['initial_pose_topic']``) counts with the
    parameter's default; a name computed in a variable (the image subscription) is documented by
    its ``*_topic`` parameter, which :func:`interface_name_ok` accepts.
    """
    src = node_source_text()
    names = set()
    for _, arg in _CREATE_RE.findall(src):
        literal = re.fullmatch(r"'([^']*)'", arg)
        from_param = re.fullmatch(r"self\._cfg\['(\w+)'\]", arg)
        if literal:
            names.add(literal.group(1))
        elif from_param:
            names.add(P.SPECS[from_param.group(1)].default)
    assert {'~/pose', '~/relocalize'} <= names, f'the regex no longer reads the node: {names}'
    return frozenset(names)


@cache
def topic_params() -> frozenset[str]:
    return frozenset(n for n in P.SPECS if n.endswith('_topic'))


def interface_name_ok(name: str) -> bool:
    """``name`` is a topic/service the node creates, or one of its ``*_topic`` parameters."""
    if name in node_interface() or name in topic_params():
        return True
    if name in {P.SPECS[p].default for p in topic_params()}:
        return True
    m = re.fullmatch(r'<(\w+)>(/[\w/]+)?', name)  # e.g. <image_topic>/compressed
    return bool(m and m.group(1) in topic_params())


@cache
def reject_reasons() -> frozenset[str]:
    reasons = set(re.findall(r"reject\(\s*'(\w+)'", node_source_text()))
    assert reasons, 'no _reject(...) call found in the node source'
    return frozenset(reasons)


@cache
def diagnostics_keys() -> frozenset[str]:
    stats = NodeStats()
    stats.verified('verified', 'ok', 50, 40.0)  # verification keys appear after an attempt
    keys = set(stats.snapshot()['values'])
    src = node_source_text()
    keys |= set(re.findall(r"values\['(\w+)'\]\s*=", src))
    keys |= set(re.findall(r"KeyValue\(\s*key='(\w+)'", src))
    keys |= {f'rejected_{r}' for r in reject_reasons()} | {'rejected_<reason>'}
    assert {'frames_received', 'model_id', 'tf_mode'} <= keys, keys
    return frozenset(keys)


class _CapturedParserError(BaseException):  # not Exception: a main's `except Exception` misses it
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__(parser.prog)
        self.parser = parser


def capture_parser(main) -> argparse.ArgumentParser:
    """The parser ``main(argv)`` builds, stopped at its ``parse_args`` (nothing else runs)."""

    def stop(self, *args, **kwargs):
        raise _CapturedParserError(self)

    with mock.patch.object(argparse.ArgumentParser, 'parse_args', stop), \
            mock.patch.object(argparse.ArgumentParser, 'parse_known_args', stop):
        try:
            main([])
        except _CapturedParserError as captured:
            return captured.parser
    raise AssertionError(f'{main.__module__}.main returned without parsing its arguments')


@cache
def module_parser(module: str) -> argparse.ArgumentParser:
    return capture_parser(importlib.import_module(module).main)


@cache
def script_parser(path: str) -> argparse.ArgumentParser | None:
    """Parser of ``scripts/<name>.py``; None for a script without argparse (naive_node.py)."""
    file = ROOT / path
    source = file.read_text()
    if 'ArgumentParser' not in source:
        return None
    spec = importlib.util.spec_from_file_location('_docs_' + file.stem, file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return capture_parser(mod.main)


def parser_flags(parser: argparse.ArgumentParser, words: list[str]) -> set[str]:
    """Option strings ``parser`` accepts, plus those of a sub-command named in ``words``."""
    flags = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word in words:
                if word in action.choices:
                    flags |= parser_flags(action.choices[word], [])
                    break
    return flags


def all_parsers() -> list[argparse.ArgumentParser]:
    parsers = [module_parser(module) for module, _ in cli.COMMANDS.values()]
    parsers += [p for p in (script_parser(f'scripts/{f.name}')
                            for f in sorted((ROOT / 'scripts').glob('*.py'))) if p]
    out = []
    for parser in parsers:
        out.append(parser)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                out += list(action.choices.values())
    return out


@cache
def all_flags() -> frozenset[str]:
    return frozenset(f for p in all_parsers() for f in p._option_string_actions)


@cache
def code_words() -> frozenset[str]:
    """Every identifier-like word of the package's code and configuration."""
    files = [*ROOT.glob('posenet_ros/**/*.py'), *ROOT.glob('scripts/*.py'),
             *ROOT.glob('launch/*.py'), *ROOT.glob('config/*'), *ROOT.glob('requirements/*'),
             *(f for f in ROOT.glob('test/*.py')  # docs cite tests by name
               if f.name != DOCS_TEST),  # (which names made-up ones)
             ROOT / 'setup.py', ROOT / 'setup.cfg', ROOT / 'package.xml', ROOT / 'Makefile']
    words = set()
    for f in files:
        if f.is_file():
            words |= set(re.findall(r'[A-Za-z_][A-Za-z0-9_]*', f.read_text(errors='replace')))
    return frozenset(words)


@cache
def make_targets() -> frozenset[str]:
    return frozenset(re.findall(r'^([\w-]+):', (ROOT / 'Makefile').read_text(), re.M))


# --- reading markdown ----------------------------------------------------------------------------
@dataclass
class Block:
    """A paragraph, list item, table row or fenced code block, with its place in the document."""

    line: int
    text: str
    heading: str
    fenced: bool = False
    lang: str = ''
    table_header: str = ''  # first header cell of the table this row belongs to


FENCE_RE = re.compile(r'^[ \t]*```([\w-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$', re.M | re.S)
INLINE_RE = re.compile(r'(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)', re.S)
LIST_RE = re.compile(r'^\s*(?:[*+-]|\d+\.)\s')


def blocks(text: str) -> list[Block]:
    out: list[Block] = []
    fences = {text.count('\n', 0, m.start()) + 1: m for m in FENCE_RE.finditer(text)}
    lines = text.split('\n')
    heading, table_header, in_table = '', '', False
    current: list[str] = []
    start = 0

    def flush():
        if current:
            out.append(Block(start, '\n'.join(current), heading))
            current.clear()

    i = 0
    while i < len(lines):
        n, line = i + 1, lines[i]
        i += 1
        is_row = line.lstrip().startswith('|')
        if not is_row:
            in_table = False
        if n in fences:
            flush()
            m = fences[n]
            out.append(Block(n + 1, m.group(2), heading, fenced=True, lang=m.group(1)))
            i += m.group(0).count('\n')
        elif line.startswith('#'):
            flush()
            heading = line.lstrip('#').strip()
        elif is_row:
            flush()
            cells = [c.strip() for c in line.strip().strip('|').split('|')]
            if not in_table:  # a header row: the rows below belong to it
                in_table, table_header = True, cells[0]
                out.append(Block(n, line, heading, table_header='(header)'))
            elif not all(re.fullmatch(r':?-+:?', c) for c in cells):
                out.append(Block(n, line, heading, table_header=table_header))
        elif not line.strip():
            flush()
        else:
            if LIST_RE.match(line):
                flush()
            if not current:
                start = n
            current.append(line)
    flush()
    return out


def inline_spans(block: Block) -> list[tuple[int, str]]:
    """(line, text) of each inline code span of a non-fenced block (newlines become spaces)."""
    if block.fenced:
        return []
    return [(block.line + block.text.count('\n', 0, m.start()), ' '.join(m.group(2).split()))
            for m in INLINE_RE.finditer(block.text)]


def code_lines(block: Block) -> list[tuple[int, str]]:
    """Logical lines of a fenced block (backslash continuations joined)."""
    out, buf, first = [], '', None
    for k, line in enumerate(block.text.split('\n')):
        if first is None:
            first = block.line + k
        if line.rstrip().endswith('\\'):
            buf += line.rstrip()[:-1] + ' '
            continue
        out.append((first, buf + line))
        buf, first = '', None
    if buf:
        out.append((first, buf))
    return out


def github_anchor(heading: str) -> str:
    """The ``#fragment`` GitHub gives a heading."""
    text = re.sub(r'[`*_]', '', heading).strip().lower()
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def headings(text: str) -> list[str]:
    return [h.strip() for h in re.findall(r'^#+\s+(.+)$', FENCE_RE.sub('', text), re.M)]


def anchors(text: str) -> set[str]:
    return {github_anchor(h) for h in headings(text)}

