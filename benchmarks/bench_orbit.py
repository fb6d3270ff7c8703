"""Benchmark the reference and fast engines on full-size Zero123 weights (random unless --checkpoint).

    python benchmarks/bench_orbit.py --out bench.json [--checkpoint zero123-xl.ckpt] [--ks 1,12,25]

Prints one table (per-K step latency, orbit seconds, peak memory, fidelity) and writes JSON.
Results go into docs/PERF.md with card, date, command and medians.
"""
from __future__ import annotations

import argparse
import logging

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint")
    ap.add_argument("--config")
    ap.add_argument("--ks", default="1,2,4,8,12,16,20,25")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--no-channels-last", action="store_true", help="NCHW activations (default: channels-last)")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet forward (inside the graphs)")
    ap.add_argument("--no-orbit", action="store_true")
    ap.add_argument("--out", default="bench.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from vfrt.models import Zero123, load_zero123
    from vfrt.runtime.benchmark import format_table, run_benchmark, save_json
    if args.checkpoint:
        model = load_zero123(args.checkpoint, config=args.config)
    else:
        torch.manual_seed(0)
        model = Zero123.from_config(None).eval()
    res = run_benchmark(model, ks=tuple(int(k) for k in args.ks.split(",")), repeats=args.repeats, dtype=args.dtype,
                        channels_last=not args.no_channels_last, reference=not args.no_reference,
                        orbit=not args.no_orbit, fidelity=not args.no_reference, compile=args.compile)
    res["command"] = "python benchmarks/bench_orbit.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False))
    save_json(res, args.out)
    print(format_table(res))


if __name__ == "__main__":
    main()
