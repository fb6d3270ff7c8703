"""Mask quality of vfrt's segmentation on photos without alpha (docs/SEGMENTATION.md).

Usage::

    python benchmarks/segmentation_iou.py --images /work/shared/data/real_images --seeds 3 \
        --out docs/segmentation_iou.json

Each RGBA cut-out in ``--images`` (the alpha is the ground truth, alpha > 127) is composited onto
procedural backgrounds (plain, gradient, textured, white; ``--seeds`` seeded draws each, see
vfrt/runtime/segment_eval.py), its alpha dropped, and the mask that each ``--methods`` entry
finds is compared with the alpha by IoU. ``none`` is the behaviour before segmentation existed
(non-white pixels); ``rembg`` is measured only where rembg and its model are installed. Prints
a summary (mean / min IoU per method and background), a per-photo table for the first method,
and writes everything to JSON.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vfrt.runtime.segment import SEGMENT_METHODS, rembg_status, segment  # noqa: E402
from vfrt.runtime.segment_eval import BACKGROUNDS, alpha_mask, composite, make_background, mask_iou  # noqa: E402


def measure(paths: list[Path], methods: list[str], backgrounds: list[str], seeds: int) -> list[dict]:
    """One row per (photo, background, seed, method): IoU, method actually used, seconds."""
    rows = []
    for path in paths:
        rgba = np.asarray(Image.open(path).convert("RGBA"))
        truth = alpha_mask(rgba)
        for background in backgrounds:
            for seed in range(seeds):
                photo = composite(rgba, make_background(background, *rgba.shape[:2], seed=seed))
                for method in methods:
                    t0 = time.perf_counter()
                    found = segment(photo, method)
                    rows.append({"photo": path.name, "background": background, "seed": seed, "method": method,
                                 "used": found.method, "iou": round(mask_iou(found.mask, truth), 4),
                                 "seconds": round(time.perf_counter() - t0, 3)})
    return rows


def _summary(rows: list[dict], methods: list[str], backgrounds: list[str]) -> str:
    lines = ["mean / min IoU over photos and seeds", f"{'method':<10}" + "".join(f"{b:>18}" for b in backgrounds)]
    for method in methods:
        cells = []
        for b in backgrounds:
            ious = [r["iou"] for r in rows if r["method"] == method and r["background"] == b]
            cells.append(f"{np.mean(ious):.3f} / {np.min(ious):.3f}".rjust(18))
        lines.append(f"{method:<10}" + "".join(cells))
    return "\n".join(lines)


def _per_photo(rows: list[dict], method: str, backgrounds: list[str]) -> str:
    photos = sorted({r["photo"] for r in rows})
    lines = [f"per photo, method {method} (mean over seeds; min in brackets)",
             f"{'photo':<20}" + "".join(f"{b:>18}" for b in backgrounds)]
    for photo in photos:
        cells = []
        for b in backgrounds:
            ious = [r["iou"] for r in rows if r["method"] == method and r["background"] == b and r["photo"] == photo]
            cells.append(f"{np.mean(ious):.3f} ({np.min(ious):.3f})".rjust(18))
        lines.append(f"{photo:<20}" + "".join(cells))
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="Folder of RGBA cut-outs (*.png).")
    parser.add_argument("--methods", default="grabcut,rembg,none",
                        help=f"Comma-separated, from {', '.join(SEGMENT_METHODS)} (rembg is skipped when unusable).")
    parser.add_argument("--backgrounds", default=",".join(BACKGROUNDS))
    parser.add_argument("--seeds", type=int, default=3, help="Background draws per photo and type.")
    parser.add_argument("--out", type=Path, default=Path("segmentation_iou.json"))
    args = parser.parse_args(argv)
    logging.getLogger("vfrt").setLevel(logging.ERROR)     # "none" warns about every non-white photo
    paths = sorted(args.images.glob("*.png"))
    if not paths:
        parser.error(f"no *.png in {args.images}")
    methods = [m for m in args.methods.split(",") if m]
    backgrounds = [b for b in args.backgrounds.split(",") if b]
    bad = [m for m in methods if m not in SEGMENT_METHODS] + [b for b in backgrounds if b not in BACKGROUNDS]
    if bad:
        parser.error(f"unknown method or background: {', '.join(bad)}")
    usable, why = rembg_status()
    if "rembg" in methods and not usable:
        print(f"skipping rembg: {why}")
        methods.remove("rembg")
    rows = measure(paths, methods, backgrounds, args.seeds)
    text = _summary(rows, methods, backgrounds) + "\n\n" + _per_photo(rows, methods[0], backgrounds)
    print(text)
    result = {"command": " ".join(["python", "benchmarks/segmentation_iou.py"] + (argv or sys.argv[1:])),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{_cpu_name()}, {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}",
              "python": platform.python_version(), "rembg": why, "seeds": args.seeds, "rows": rows}
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
