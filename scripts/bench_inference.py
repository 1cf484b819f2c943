#!/usr/bin/env python3
"""CPU/GPU latency of the full inference path per backbone: eager vs TorchScript vs .pt2 vs int8.

Each variant runs the exported module (uint8 frame -> preprocessing -> PoseNet -> (1, 8) pose)
on a ``size x size`` RGB frame (default 224, with resize = crop = 224 so no resize work hides
the network), batch 1, after warm-up. Random-init weights: latency does not depend on them.
On the CPU the ``int8`` column is the ``posenet-ros quantize`` export of the same TorchScript
file (calibrated on 16 random frames), loaded the same way, in the same run; ``n/a`` where a
backbone cannot be quantized (the JSON row says why).

    python scripts/bench_inference.py --runs 50 --out bench.json
    python scripts/bench_inference.py --backbones resnet18,efficientnet_lite0 --device cuda
    python scripts/bench_inference.py --size 112 --no-pt2 --threads 1   # fp32 vs int8 at 112 px
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from posenet_ros.core.errors import PoseNetError
from posenet_ros.model.export import ExportedPoseNet, export_model, load_file
from posenet_ros.model.network import BACKBONES, build_posenet
from posenet_ros.model.relocalizer import resolve_device


def _time_runs(fns: dict, x: torch.Tensor, warmup: int, runs: int) -> dict[str, list[float]]:
    """Times (ms) of each variant, the variants alternating run by run.

    Load from other processes on a shared machine then hits all of them alike, so the ratios
    between variants stay meaningful.
    """
    def once(fn) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = fn(x)
        out[0].cpu()  # synchronises on CUDA (the export returns pose, feature)
        return (time.perf_counter() - t0) * 1000.0

    for fn in fns.values():
        for _ in range(warmup):
            once(fn)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            times[k].append(once(fn))
    return times


def _stats(times: list[float]) -> dict:
    return {'median_ms': statistics.median(times),
            'p95_ms': float(np.percentile(times, 95)),
            'min_ms': min(times), 'runs': len(times)}


def _int8(ts_path: Path, size: int) -> tuple[object | None, dict]:
    """The int8 export of ``ts_path`` (loaded), or None and the reason it failed."""
    from posenet_ros.model.quantize import quantize_export

    calib = list(np.random.default_rng(0).integers(0, 256, (16, size, size, 3), dtype=np.uint8))
    t0 = time.perf_counter()
    try:
        result = quantize_export(ts_path, calib)
    except PoseNetError as exc:
        return None, {'error': str(exc)}
    return load_file(result.path, 'cpu')[0], {'quantize_s': time.perf_counter() - t0}


def bench_backbone(name: str, size: int, runs: int, warmup: int, device: torch.device,
                   tmp: Path, pt2: bool, int8: bool = False) -> dict:
    torch.manual_seed(0)
    net = build_posenet(name).eval()
    t0 = time.perf_counter()
    result = export_model(net, out_dir=tmp, name=name, resize=size, crop=size, pt2=pt2)
    export_s = time.perf_counter() - t0
    frame = torch.randint(0, 256, (1, size, size, 3), dtype=torch.uint8, device=device)
    variants = {'eager': ExportedPoseNet(net, size, size).eval().to(device)}
    variants['torchscript'] = load_file(result.ts_path, device)[0]
    if pt2:
        variants['pt2'] = load_file(result.pt2_path, device)[0]
    row = {'backbone': name, 'params_m': sum(p.numel() for p in net.parameters()) / 1e6,
           'export_s': export_s}
    if int8:
        module, info = _int8(result.ts_path, size)
        if module is None:
            row['int8'] = info
        else:
            variants['int8'] = module
            row['int8_info'] = info
    ref = None
    times = _time_runs(variants, frame, warmup, runs)
    for variant, fn in variants.items():
        row[variant] = _stats(times[variant])
        with torch.inference_mode():
            out = fn(frame)[0].cpu()  # (pose, feature): compare the poses
        ref = out if ref is None else ref
        row[variant]['max_abs_diff_vs_eager'] = float((out - ref).abs().max())
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--backbones', default=','.join(BACKBONES),
                        help=f'comma-separated subset of {",".join(BACKBONES)}')
    parser.add_argument('--runs', type=int, default=50, help='timed runs per variant')
    parser.add_argument('--warmup', type=int, default=5, help='untimed runs per variant')
    parser.add_argument('--size', type=int, default=224, help='frame side (px), also crop')
    parser.add_argument('--device', default='cpu', help='cpu, cuda, cuda:N or auto')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(),
                        help='torch intra-op threads (default: torch default)')
    parser.add_argument('--no-pt2', action='store_true', help='skip the (slow) .pt2 export')
    parser.add_argument('--no-int8', action='store_true',
                        help='skip the int8 export (always skipped on CUDA: CPU-only kernels)')
    parser.add_argument('--out', type=Path, help='write the results as JSON here')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    names = [b.strip() for b in args.backbones.split(',') if b.strip()]
    unknown = [b for b in names if b not in BACKBONES]
    if unknown:
        parser.error(f'unknown backbone(s) {unknown}; choose from {", ".join(BACKBONES)}')
    info = {'torch_version': torch.__version__, 'device': str(device),
            'device_name': (torch.cuda.get_device_name(device) if device.type == 'cuda'
                            else platform.processor() or platform.machine()),
            'threads': torch.get_num_threads(), 'size': args.size, 'batch': 1,
            'runs': args.runs, 'warmup': args.warmup, 'python': platform.python_version()}
    print(f'# torch {info["torch_version"]} on {device} ({info["device_name"]}), '
          f'{info["threads"]} threads, {args.size}x{args.size} uint8 frame, batch 1, '
          f'{args.runs} runs after {args.warmup} warm-up')
    rows = []
    int8 = not args.no_int8 and device.type == 'cpu'
    variants = (['eager', 'torchscript'] + ([] if args.no_pt2 else ['pt2'])
                + (['int8'] if int8 else []))
    header = f'{"backbone":<20}{"params M":>9}' + ''.join(
        f'{v + " p50":>16}{v + " p95":>16}' for v in variants)
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            row = bench_backbone(name, args.size, args.runs, args.warmup, device, Path(tmp),
                                 not args.no_pt2, int8)
            rows.append(row)
            print(f'{name:<20}{row["params_m"]:>9.2f}' + ''.join(
                f'{row[v]["median_ms"]:>13.1f} ms{row[v]["p95_ms"]:>13.1f} ms'
                if 'median_ms' in row[v] else f'{"n/a":>16}{"n/a":>16}'
                for v in variants), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({'info': info, 'results': rows}, indent=1))
        print(f'# wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
