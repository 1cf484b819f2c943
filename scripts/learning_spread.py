#!/usr/bin/env python3
"""Rerun the learning tests the way other machines would, and report each assertion's margin.

Every test that asserts a learned or measured outcome is marked ``learning`` and asserts
through ``test/helpers_learning.check_below``, which logs ``(name, value, bound)``. This script
runs ``pytest -m learning`` once per combination of

* CPU kernel path: the machine's default, and each path this CPU can be forced to
  (``ONEDNN_MAX_CPU_ISA=AVX2`` / ``SSE41`` for oneDNN's convolutions,
  ``ATEN_CPU_CAPABILITY=default|avx2|avx512`` for ATen's vectorised kernels,
  ``OPENCV_CPU_DISABLE`` for OpenCV's SIFT and matching at SSE level);
* seed (``POSENET_TEST_SEED``: scene and training seeds of the learning tests);
* torch threads (``POSENET_TEST_THREADS``),

then prints one row per assertion: bound, best and worst observed value, and the worst case as
a fraction of the bound (the target is <= ~70 %). ``--sabotage`` instead breaks the learning on
purpose (shuffled training labels; an int8 copy of a model that lost its trained weights) and
checks that every assertion then fails, i.e. that none of them is a check that cannot fail.

    python scripts/learning_spread.py          # every kernel path, seed 0 (make test-isa)
    python scripts/learning_spread.py --seeds 0 1 2 --threads 1 2
    python scripts/learning_spread.py --sabotage

Writes ``bench_results/learning_spread.{json,md}``. Exit status 1 when a run failed (or, with
``--sabotage``, when some assertion still passed on broken learning).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SABOTAGE_MODES = ('labels', 'int8')


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where that file does not exist)."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('flags'):
                return set(line.split(':', 1)[1].split())
    except OSError:
        pass
    return set()


def kernel_paths(flags: set[str]) -> dict[str, dict[str, str]]:
    """Name -> environment of every kernel path this CPU can run (the default first)."""
    paths = {'native': {}}
    if 'avx512f' in flags:
        paths['onednn-avx2'] = {'ONEDNN_MAX_CPU_ISA': 'AVX2'}
    if 'avx2' in flags:
        paths['onednn-sse41'] = {'ONEDNN_MAX_CPU_ISA': 'SSE41'}
    paths['aten-default'] = {'ATEN_CPU_CAPABILITY': 'default'}
    if 'avx2' in flags:
        paths['aten-avx2'] = {'ATEN_CPU_CAPABILITY': 'avx2'}
    if 'avx512f' in flags:
        paths['aten-avx512'] = {'ATEN_CPU_CAPABILITY': 'avx512'}
    if 'avx' in flags:  # OpenCV's dispatched kernels (SIFT, matching) at SSE level
        paths['opencv-sse'] = {'OPENCV_CPU_DISABLE': 'AVX512F,AVX2,FMA3,AVX,FP16'}
    return paths


def run_once(env_extra: dict[str, str], log: Path, select: str,
             pytest_args: list[str]) -> tuple[int, float, str, set[str]]:
    """One ``pytest -m learning`` run: (exit code, seconds, output tail, failed test ids)."""
    env = {**os.environ, **env_extra, 'POSENET_LEARNING_LOG': str(log)}
    junit = log.with_suffix('.xml')
    cmd = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-m', 'learning',
           f'--junitxml={junit}', *(['-k', select] if select else []), *pytest_args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return (proc.returncode, time.monotonic() - t0, (proc.stdout + proc.stderr)[-2500:],
            failed_tests(junit))


def failed_tests(junit: Path) -> set[str]:
    """``file.py::test`` ids of the failed or errored tests in a junit XML report."""
    if not junit.exists():
        return set()
    out = set()
    for case in ET.parse(junit).getroot().iter('testcase'):
        if case.find('failure') is not None or case.find('error') is not None:
            path = case.get('classname', '').replace('.', '/') + '.py'
            out.add(f"{path}::{case.get('name')}")
    return out


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per assertion name: bound, min/max value, worst fraction of the bound, runs."""
    out: dict[str, dict] = {}
    for r in rows:
        s = out.setdefault(r['name'], {'bound': r['bound'], 'values': [], 'runs': []})
        s['values'].append(r['value'])
        s['runs'].append(r['run'])
    for s in out.values():
        # NaN (e.g. a median of no verified frames) counts as the worst value: it fails.
        s['values'] = [v if v == v else float('inf') for v in s['values']]
        worst = max(s['values'])
        s.update(min=min(s['values']), max=worst, worst_fraction=worst / s['bound'],
                 n=len(s['values']), worst_run=s['runs'][s['values'].index(worst)])
    return out


def markdown(summary: dict[str, dict], runs: list[dict]) -> str:
    lines = ['| assertion | bound | best | worst | worst / bound | runs | worst run |',
             '| --- | --- | --- | --- | --- | --- | --- |']
    for name, s in sorted(summary.items()):
        lines.append(f"| `{name}` | {s['bound']:.4g} | {s['min']:.4g} | {s['max']:.4g} | "
                     f"{100 * s['worst_fraction']:.0f} % | {s['n']} | {s['worst_run']} |")
    lines += ['', '| run | exit | seconds |', '| --- | --- | --- |']
    lines += [f"| {r['run']} | {r['rc']} | {r['seconds']:.0f} |" for r in runs]
    return '\n'.join(lines) + '\n'


def sabotage_table(runs: list[dict]) -> str:
    """Per check of the normal run: what each sabotaged run made of it (it must fail).

    A check fails under a sabotage when its value reaches the bound, or when it was not reached
    because its test failed earlier (e.g. a map that cannot be built from shuffled poses).
    """
    normal, broken = runs[0], runs[1:]
    modes = [r['mode'] for r in broken]
    lines = ['| check | normal | ' + ' | '.join(f'sabotage {m}' for m in modes)
             + ' | fails on broken learning |',
             '| --- | --- | ' + ' | '.join('---' for _ in modes) + ' | --- |']
    for ref in normal['rows']:
        cells, fails = [], False
        for run in broken:
            hit = [r for r in run['rows'] if r['name'] == ref['name']]
            if hit:
                v = hit[-1]['value']
                bad = not v < ref['bound']
                cells.append(f'{v:.4g}' + (' (fails)' if bad else ''))
            else:
                bad = ref['test'] in run['failed_tests']
                cells.append('test failed before it' if bad else 'not run')
            fails = fails or bad
        lines.append(f"| `{ref['name']}` | {ref['value']:.4g} < {ref['bound']:.4g} | "
                     + ' | '.join(cells) + f" | {'yes' if fails else '**no**'} |")
    return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0])
    parser.add_argument('--threads', type=int, nargs='+', default=[1])
    parser.add_argument('--kernels', nargs='+', default=None,
                        help='kernel path names (default: all this CPU has): '
                             + ', '.join(kernel_paths({'avx2', 'avx512f'})))
    parser.add_argument('-k', dest='select', default='', help='pytest -k expression')
    parser.add_argument('--sabotage', action='store_true',
                        help='break the learning on purpose: every assertion must fail')
    parser.add_argument('--out', type=Path, default=ROOT / 'bench_results')
    args, pytest_args = parser.parse_known_args(argv)

    paths = kernel_paths(cpu_flags())
    names = args.kernels or list(paths)
    unknown = [n for n in names if n not in paths]
    if unknown:
        parser.error(f'kernel path(s) {unknown} not available on this CPU; have {list(paths)}')
    if args.sabotage:
        # A normal run first: the list of checks (and their tests) every sabotage must break.
        combos = [(names[0], args.seeds[0], args.threads[0], mode)
                  for mode in (None, *SABOTAGE_MODES)]
    else:
        combos = [(*c, None) for c in itertools.product(names, args.seeds, args.threads)]

    rows: list[dict] = []
    runs: list[dict] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix='learning_spread_') as tmp:
        for i, (kernel, seed, threads, mode) in enumerate(combos, 1):
            label = f'{kernel} seed {seed} threads {threads}' + (f' sabotage {mode}' if mode
                                                                 else '')
            env = {**paths[kernel], 'POSENET_TEST_SEED': str(seed),
                   'POSENET_TEST_THREADS': str(threads)}
            if mode:
                env['POSENET_TEST_SABOTAGE'] = mode
            log = Path(tmp) / f'run{i}.jsonl'
            print(f'[{i}/{len(combos)}] {label} ...', flush=True)
            rc, secs, tail, failed_ids = run_once(env, log, args.select, pytest_args)
            got = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
            for r in got:
                r['run'] = label
            rows += got
            runs.append({'run': label, 'rc': rc, 'seconds': secs, 'checks': len(got),
                         'mode': mode, 'rows': got, 'failed_tests': sorted(failed_ids)})
            print(f'    exit {rc}, {len(got)} checks, {secs:.0f} s', flush=True)
            if rc != 0 and not mode:   # sabotaged runs are meant to fail
                failed = True
                print(tail, flush=True)

    if args.sabotage:
        text = sabotage_table(runs)
        held = [line for line in text.splitlines() if line.endswith('| **no** |')]
        print(text)
        if held:
            print(f'FAIL: {len(held)} check(s) passed although the learning was broken')
        else:
            print('ok: every learning check fails on broken learning')
        failed = bool(held) or failed
        summary = {}
    else:
        summary = summarise(rows)
        text = markdown(summary, runs)
        print(text)
        over = [n for n, s in summary.items() if s['worst_fraction'] > 0.7]
        if over:
            print(f'note: worst case above 70 % of the bound for {over}')
    args.out.mkdir(parents=True, exist_ok=True)
    stem = 'learning_sabotage' if args.sabotage else 'learning_spread'
    (args.out / f'{stem}.md').write_text(text)
    doc = {'runs': [{k: v for k, v in r.items() if k != 'rows'} for r in runs],
           'summary': {k: {kk: vv for kk, vv in v.items() if kk != 'runs'}
                       for k, v in summary.items()}}
    (args.out / f'{stem}.json').write_text(json.dumps(doc, indent=1))
    print(f'wrote {args.out / stem}.md and .json')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
