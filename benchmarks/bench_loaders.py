"""Loader benchmark: MapInWild 14×256² crops from 1920² tiles on one core, where the time goes, before/after.

"Before" reopens every file and re-reads every header for each sample (what the loader did before it kept
handles open); "after" is the loader as it is (one set of open handles and checked headers per process).
Both run on the same simulated tiles, interleaved, in one process pinned to one core, twice: with GDAL's
default block cache, and with an 8 MB cache (``GDAL_CACHEMAX=8``) so that every crop decodes its blocks again,
as on the full 1018-tile dataset where a tile is rarely revisited.  Not a test: nothing here asserts a time.

    python benchmarks/bench_loaders.py --tiles 4 --tile 1920 --crop 256 --samples 80 [--other-loaders]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# one core, one thread everywhere (set before numpy/torch/GDAL start their pools)
for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GDAL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

# where the time goes: (label, file suffix, function name) of the profiled functions, inclusive time
PARTS = [
    ("open files + read headers", "data/base.py", "open"),
    ("decode pixels (GDAL windowed read)", "data/io.py", "read_open"),
    ("value checks (dtype, range, codes)", "data/base.py", "check_values"),
    ("non-finite policy", "data/base.py", "apply_nonfinite"),
    ("paper normalisation", "data/mapinwild.py", "normalize"),
]


def _one_core() -> None:
    import torch

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)


def _parts(prof: cProfile.Profile) -> dict[str, float]:
    stats = pstats.Stats(prof).stats
    out = {}
    for label, suffix, name in PARTS:
        out[label] = sum(v[3] for (f, _, fn), v in stats.items() if f.endswith(suffix) and fn == name)
    return out


def measure(root: Path, crop: int, samples: int, rounds: int = 3) -> dict:
    "Samples/s before (reopen per sample) and after (open handles), interleaved; profile of one 'after' pass."
    from fusionbook.data.mapinwild import MapInWild

    ds = MapInWild(root, split=None, target="mask", crop_size=crop, seed=0)
    n = len(ds)
    ds[0]  # warm-up: imports, first open

    def run(reopen: bool) -> float:
        t = time.perf_counter()
        for i in range(samples):
            if reopen:
                ds.close()
                ds._headers.clear()
            ds[i % n]
        return samples / (time.perf_counter() - t)

    before, after = [], []
    for _ in range(rounds):
        before.append(run(True))
        after.append(run(False))
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    for i in range(samples):
        ds[i % n]
    prof.disable()
    wall = time.perf_counter() - t
    return {"before": sorted(before)[len(before) // 2], "after": sorted(after)[len(after) // 2],
            "parts_ms": {k: 1e3 * v / samples for k, v in _parts(prof).items()}, "profiled_ms": 1e3 * wall / samples,
            "gdal_cachemax": os.environ.get("GDAL_CACHEMAX", "default")}


def bench_loader(tmp: Path, dataset: str, samples: int, **kw) -> dict[str, float]:
    "Simulate ``dataset`` (default size) and time ``samples`` random sample reads through its loader."
    import numpy as np

    import fusionbook.data as fd

    t = time.perf_counter()
    root = fd.simulate(dataset, tmp / dataset, seed=0)
    sim_s = time.perf_counter() - t
    cls = {"bigearthnet": fd.BigEarthNetMM, "sen12gum": fd.SEN12GUM, "spacenet7": fd.SpaceNet7S1S2}[dataset]
    ds = cls(root, split=None, **kw)
    idx = np.random.default_rng(0).integers(0, len(ds), samples)
    t = time.perf_counter()
    for i in idx:
        ds[int(i)]
    return {"simulate_s": sim_s, "samples_per_s": samples / (time.perf_counter() - t), "len": len(ds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=4)
    ap.add_argument("--tile", type=int, default=1920)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--samples", type=int, default=80)
    ap.add_argument("--root", type=Path, default=None, help="reuse simulated MapInWild tiles in this folder")
    ap.add_argument("--other-loaders", action="store_true", help="also time the other three loaders")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:  # one measurement, in a process whose GDAL cache size was set before GDAL started
        _one_core()
        print(json.dumps(measure(args.root, args.crop, args.samples)))
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        root = args.root
        if root is None or not (root / "simulation.json").is_file():
            from fusionbook.data.mapinwild import simulate_mapinwild

            root = root or tmp / "mapinwild"
            t = time.perf_counter()
            simulate_mapinwild(root, n=args.tiles, seed=0, tile_size=args.tile, splits=(1.0, 0.0, 0.0))
            print(f"simulated {args.tiles} MapInWild tiles of {args.tile}² in {time.perf_counter() - t:.1f} s")
        print(f"MapInWild: 14-channel {args.crop}² crops (+ mask) of {args.tile}² tiles, one core, "
              f"{args.samples} samples per pass, median of 3 interleaved passes")
        for cache in (None, "8"):
            env = dict(os.environ)
            if cache is not None:
                env["GDAL_CACHEMAX"] = cache
            out = subprocess.run([sys.executable, __file__, "--_child", "--root", str(root), "--crop",
                                  str(args.crop), "--samples", str(args.samples)], env=env, capture_output=True,
                                 text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            label = "default GDAL block cache" if cache is None else "GDAL_CACHEMAX=8 MB (every crop decodes again)"
            print(f"\n  [{label}]")
            print(f"  before (reopen files, re-read headers per sample) {r['before']:7.1f} samples/s")
            print(f"  after  (open handles, headers checked once)        {r['after']:7.1f} samples/s")
            print(f"  ratio after/before = {r['after'] / r['before']:.2f}x")
            print(f"  where the time goes (after, profiled: {r['profiled_ms']:.1f} ms/sample incl. profiler):")
            for k, v in r["parts_ms"].items():
                print(f"    {k:38s} {v:6.2f} ms")
        if args.other_loaders:
            print()
            for name, kw in [("bigearthnet", {}), ("sen12gum", {}), ("spacenet7", {"crop_size": 64})]:
                r = bench_loader(tmp, name, 50, **kw)
                print(f"{name:12s} simulate {r['simulate_s']:6.2f} s   {r['len']:5d} samples   "
                      f"{r['samples_per_s']:7.1f} samples/s")


if __name__ == "__main__":
    main()
