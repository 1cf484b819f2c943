#!/usr/bin/env python3
"""``make bench``: the whole benchmark suite, one table, one JSON file.

Runs, each in its own process (so its peak memory is measured alone):

1. inference latency per backbone, eager vs TorchScript vs ``.pt2``, batch 1, p50/p95
   (``scripts/bench_inference.py``);
2. end-to-end node latency and sustained rate at 30 Hz 640x480, fp32 and int8 exports, against
   the naive node measured in the same run (``scripts/bench_node_latency.py``);
3. training throughput with and without the decoded-image cache (``scripts/bench_training.py``)
   on a small synthetic dataset rendered here;
4. geometric verification (``scripts/bench_refine.py``): refinement latency at 640x480 by stage
   (p50/p95), map build time, size and load time for the demo scene (and 1,000 frames);
5. the node with verification (``scripts/bench_node_refine.py``): coarse latency with
   ``refine`` off / request / continuous, and ``~/relocalize`` answer times, in one run.

Each script reports medians/percentiles over its repeated runs. The machine and versions are
recorded with the numbers. No number is asserted: this machine is noisy, compare ratios measured
in the same run.

    python scripts/bench.py [--quick] [--out bench_results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine_info() -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return {'cpu': cpu, 'cores': os.cpu_count(), 'python': platform.python_version(),
            'torch': torch.__version__, 'cuda': torch.cuda.is_available(),
            'platform': platform.platform(), 'date': time.strftime('%Y-%m-%d %H:%M:%S')}


def run(name: str, cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` (output teed to ``log``); return wall time and the child's peak RSS."""
    print(f'\n### {name}: {" ".join(cmd)}', flush=True)
    t0 = time.perf_counter()
    with open(log, 'w') as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        for line in proc.stdout:
            sys.stdout.write(line)
            f.write(line)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f'{name} failed with exit code {code}; see {log}')
    return {'wall_s': round(time.perf_counter() - t0, 1),
            'peak_rss_mb': round(usage.ru_maxrss / 1024.0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', type=Path, default=ROOT / 'bench_results')
    ap.add_argument('--quick', action='store_true', help='fewer runs and backbones')
    ap.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    args = ap.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    threads = ['--threads', str(args.threads)] if args.threads else []
    report = {'machine': machine_info()}
    procs = {}

    backbones = ('mobilenet_v3_small,efficientnet_lite0' if args.quick else
                 'googlenet,resnet18,resnet34,mobilenet_v3_large,mobilenet_v3_small,'
                 'efficientnet_b0,efficientnet_lite0')
    procs['inference'] = run('inference', [
        py, 'scripts/bench_inference.py', '--backbones', backbones,
        '--runs', '15' if args.quick else '50', '--warmup', '5', '--out',
        str(out / 'inference.json'), *threads], out / 'inference.log')

    procs['node'] = run('node latency', [
        py, 'scripts/bench_node_latency.py', '--backbone', 'mobilenet_v3_small',
        '--width', '640', '--height', '480', '--rate', '30',
        '--duration', '8' if args.quick else '20', '--json', str(out / 'node.json'),
        *threads], out / 'node.log')

    data = out / 'synth'
    if not (data / 'dataset' / 'poses.csv').is_file():
        subprocess.run([py, '-m', 'posenet_ros.cli', 'synth', '--out', str(data), '--n-train',
                        '96', '--n-test', '8'], cwd=ROOT, check=True)
    procs['training'] = run('training throughput', [
        py, 'scripts/bench_training.py', '--dataset', str(data / 'dataset'),
        '--steps', '2' if args.quick else '4', '--out', str(out / 'training.json'),
        '--cache-dir', str(out / 'cache'), *threads], out / 'training.log')

    procs['refine'] = run('verification', [
        py, 'scripts/bench_refine.py', '--frames', '100' if args.quick else '300',
        '--queries', '20' if args.quick else '60', *([] if args.quick else ['--large', '1000']),
        '--work', str(out / 'refine'), '--json', str(out / 'refine.json')], out / 'refine.log')

    procs['node_refine'] = run('node with verification', [
        py, 'scripts/bench_node_refine.py', '--duration', '8' if args.quick else '15',
        '--calls', '5' if args.quick else '15', '--json', str(out / 'node_refine.json')],
        out / 'node_refine.log')

    for key, fname in (('inference', 'inference.json'), ('node', 'node.json'),
                       ('training', 'training.json'), ('refine', 'refine.json'),
                       ('node_refine', 'node_refine.json')):
        report[key] = json.loads((out / fname).read_text())
        report[key]['process'] = procs[key]
    (out / 'bench.json').write_text(json.dumps(report, indent=1))
    print('\n' + format_table(report))
    print(f'\nwrote {out / "bench.json"}')
    return 0


def _latency_rows(runs: dict, names, label, extra=lambda r: '') -> list[str]:
    """A p50/p99 table row per run in ``names`` that has a latency (``label(name)``)."""
    return [f'| {label(name)} | {runs[name]["p50_ms"]}/{runs[name]["p99_ms"]}{extra(runs[name])} |'
            for name in names if 'p50_ms' in runs.get(name, {})]


def _node_rows(node: dict) -> list[str]:
    """The real node against the naive one, and the model alone, on the same frames."""
    lines = _latency_rows(
        node, ('node', 'node_int8', 'naive'),
        lambda name: f'{name} 640x480@30Hz: p50/p99 ms, answered, lag slope',
        lambda r: f', {r["answered_fraction"]:.0%}, {r["lag_slope_ms_per_s"]} ms/s')
    for name, suffix in (('node', ''), ('node_int8', '_int8')):
        if f'ratio_p50{suffix}' in node:
            lines.append(f'| naive / {name} latency (same run) | '
                         f'p50 x{node[f"ratio_p50{suffix}"]}, p99 x{node[f"ratio_p99{suffix}"]} |')
    what = {'model_only': 'fp32', 'model_only_int8': 'int8'}
    return lines + _latency_rows(node, what, lambda key: f'model alone {what[key]} (same frames) '
                                 'p50/p99 ms')


def _refine_rows(ref: dict) -> list[str]:
    """Refinement by stage and the scene maps' build, size and load."""
    lines = ['| refinement 640x480 p50/p95 ms (features, matching, pnp, total) | '
             + ', '.join(f'{v["p50"]}/{v["p95"]}' for v in ref['refine_640x480_ms'].values())
             + f' ({ref["refine_640x480_quality"]["verified_fraction"]:.0%} verified) |']
    for key, what in (('demo_map', 'demo scene'), ('large_map', '1,000 frames')):
        if key in ref:
            m = ref[key]
            lines.append(f'| map of the {what} ({m["frames"]} frames): build, size, load | '
                         f'{m["build_s"]} s, {m["size_mb"]} MB, {m["load_s"]} s |')
    return lines


def _node_refine_rows(nr: dict) -> list[str]:
    """The node's coarse latency by refine mode, its map load and ~/relocalize answers."""
    lines = _latency_rows(
        nr, ('refine_off', 'refine_request', 'refine_continuous'),
        lambda name: f'node coarse ~/pose, {name.replace("_", ": ")}, p50/p99 ms',
        lambda r: f', {r["verified_per_s"]} verified/s' if 'verified_per_s' in r else '')
    if 'node_load_s' in nr.get('map', {}):
        lines.append(f'| node start-up: scene map loaded in | {nr["map"]["node_load_s"]} s '
                     f'({nr["map"]["mb"]} MB) |')
    rel = nr.get('relocalize', {})
    if rel:
        lines.append(f'| ~/relocalize: verified answers, frame -> answer p50/max ms | '
                     f'{rel["verified_answers"]}/{rel["calls"]}, '
                     f'{rel["frame_to_answer_ms_p50"]}/{rel["frame_to_answer_ms_max"]} |')
    return lines


def format_table(report: dict) -> str:
    """One table of the headline numbers."""
    m = report['machine']
    lines = [f'posenet_ros benchmark - {m["cpu"]}, {m["cores"]} cores, torch {m["torch"]}, '
             f'cuda={m["cuda"]}, {m["date"]}', '',
             '| what | value |', '| --- | --- |']
    inf = report['inference']
    for row in inf['results']:
        cells = [f'{v} {row[v]["median_ms"]:.1f}/{row[v]["p95_ms"]:.1f}'
                 for v in ('eager', 'torchscript', 'pt2') if v in row]
        lines.append(f'| inference {row["backbone"]} {inf["info"]["size"]}px, p50/p95 ms | '
                     f'{", ".join(cells)} |')
    lines += _node_rows(report['node'])
    tr = report['training']
    t, d = tr['train_images_per_s'], tr['data_images_per_s']
    lines.append(f'| training img/s (cache / decode) | {t["cache"]} / {t["decode"]} '
                 f'(x{t["ratio"]}) |')
    lines.append(f'| data loading img/s (cache / decode) | {d["cache"]} / {d["decode"]} '
                 f'(x{d["ratio"]}) |')
    lines += _refine_rows(report['refine'])
    lines += _node_refine_rows(report['node_refine'])
    for key in ('inference', 'node', 'training', 'refine', 'node_refine'):
        p = report[key]['process']
        lines.append(f'| peak RSS of the {key} process | {p["peak_rss_mb"]} MB '
                     f'({p["wall_s"]} s) |')
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
