"""Benchmark the reference and fast engines on full-size Zero123 weights (random unless --checkpoint).

    python benchmarks/bench_orbit.py --out bench.json [--checkpoint zero123-xl.ckpt] [--ks 1,12,25] [--compile]

The same command as `vfrt bench` (see `--help`): prints one table (per-K step latency, orbit
seconds, peak memory, fidelity) and writes JSON; results go into docs/PERF.md.
"""
import logging

from vfrt.cli.bench import bench

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    bench()
