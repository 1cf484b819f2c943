#!/usr/bin/env python3
"""CPU/GPU latency of the full inference path per backbone: eager vs TorchScript vs .pt2.

Each variant runs the exported module (uint8 frame -> preprocessing -> PoseNet -> (1, 8) pose)
on a ``size x size`` RGB frame (default 224, with resize = crop = 224 so no resize work hides
the network), batch 1, after warm-up. Random-init weights: latency does not depend on them.

    python scripts/bench_inference.py --runs 50 --out bench.json
    python scripts/bench_inference.py --backbones resnet18,efficientnet_lite0 --device cuda
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

from posenet_ros.export import ExportedPoseNet, export_model, load_file
from posenet_ros.model import BACKBONES, build_posenet
from posenet_ros.relocalizer import resolve_device


def _time_runs(fn, x: torch.Tensor, warmup: int, runs: int, device: torch.device) -> list[float]:
    def once() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = fn(x)
        out.cpu()  # synchronises on CUDA
        return (time.perf_counter() - t0) * 1000.0

    for _ in range(warmup):
        once()
    return [once() for _ in range(runs)]


def _stats(times: list[float]) -> dict:
    return {'median_ms': statistics.median(times),
            'p95_ms': float(np.percentile(times, 95)),
            'min_ms': min(times), 'runs': len(times)}


def bench_backbone(name: str, size: int, runs: int, warmup: int, device: torch.device,
                   tmp: Path, pt2: bool) -> dict:
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
    ref = None
    for variant, fn in variants.items():
        row[variant] = _stats(_time_runs(fn, frame, warmup, runs, device))
        with torch.inference_mode():
            out = fn(frame).cpu()
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
    variants = ['eager', 'torchscript'] + ([] if args.no_pt2 else ['pt2'])
    header = f'{"backbone":<20}{"params M":>9}' + ''.join(
        f'{v + " p50":>16}{v + " p95":>16}' for v in variants)
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            row = bench_backbone(name, args.size, args.runs, args.warmup, device, Path(tmp),
                                 not args.no_pt2)
            rows.append(row)
            print(f'{name:<20}{row["params_m"]:>9.2f}' + ''.join(
                f'{row[v]["median_ms"]:>13.1f} ms{row[v]["p95_ms"]:>13.1f} ms'
                for v in variants), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({'info': info, 'results': rows}, indent=1))
        print(f'# wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
