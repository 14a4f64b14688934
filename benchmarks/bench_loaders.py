"""Loader benchmark: windowed crops vs full-tile reads, and loader throughput (samples/s).

Prints ratios measured in one run on this machine. Not a test: nothing here asserts a time.

    python benchmarks/bench_loaders.py --tile 1920 --crop 256 --reads 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from fusionbook.data.io import random_window, read_raster, write_geotiff


def _timeit(fn, reps: int) -> float:
    "Median seconds of ``reps`` calls of ``fn`` (after one warm-up)."
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def bench_windowed(tmp: Path, tile: int, crop: int, reads: int, seed: int = 0) -> dict[str, float]:
    "Time a random ``crop``² windowed read vs a full read of a 10-band uint16 ``tile``² GeoTIFF (tiled 256, deflate)."
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 10000, size=(10, tile, tile), dtype=np.uint16)
    t = time.perf_counter()
    path = write_geotiff(tmp / "s2.tif", arr)
    write_s = time.perf_counter() - t
    full = _timeit(lambda: read_raster(path, dtype=None), max(3, reads // 5))
    win = _timeit(lambda: read_raster(path, window=random_window(tile, tile, crop, rng), dtype=None), reads)
    return {"write_s": write_s, "full_read_s": full, "window_read_s": win, "speedup": full / win,
            "mb": path.stat().st_size / 2**20}


def bench_mapinwild_crops(tmp: Path, tile: int, crop: int, reads: int) -> dict[str, float]:
    "Through the MapInWild loader: a ``crop``² sample vs the whole ``tile``² sample of one simulated tile."
    from fusionbook.data.mapinwild import MapInWild, simulate_mapinwild

    root = simulate_mapinwild(tmp / "miw1920", n=1, seed=0, tile_size=tile)
    cropped = MapInWild(root, split=None, target="mask", crop_size=crop)
    whole = MapInWild(root, split=None, target="mask", crop_size=None, crop=None)
    full = _timeit(lambda: whole[0], max(3, reads // 5))
    win = _timeit(lambda: cropped[0], reads)
    return {"full_s": full, "crop_s": win, "speedup": full / win}


def bench_loader(tmp: Path, dataset: str, n: int, samples: int, **kw) -> dict[str, float]:
    "Simulate ``dataset`` and time ``samples`` random sample reads through its loader."
    import fusionbook.data as fd

    t = time.perf_counter()
    root = fd.simulate(dataset, tmp / dataset, n=n, seed=0)
    sim_s = time.perf_counter() - t
    cls = {"mapinwild": fd.MapInWild, "bigearthnet": fd.BigEarthNetMM, "sen12gum": fd.SEN12GUM,
           "spacenet7": fd.SpaceNet7S1S2}[dataset]
    ds = cls(root, split=None, **kw)
    idx = np.random.default_rng(0).integers(0, len(ds), samples)
    t = time.perf_counter()
    for i in idx:
        ds[int(i)]
    dt = time.perf_counter() - t
    return {"simulate_s": sim_s, "samples_per_s": samples / dt, "len": len(ds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tile", type=int, default=1920)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--reads", type=int, default=20)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--skip-loaders", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        r = bench_windowed(tmp, args.tile, args.crop, args.reads)
        print(f"10-band uint16 {args.tile}² GeoTIFF ({r['mb']:.1f} MB, written in {r['write_s']:.2f} s)")
        print(f"  full read      {r['full_read_s'] * 1e3:8.1f} ms")
        print(f"  {args.crop}² window   {r['window_read_s'] * 1e3:8.1f} ms")
        print(f"  ratio full/windowed = {r['speedup']:.1f}x")
        r = bench_mapinwild_crops(tmp, args.tile, args.crop, args.reads)
        print(f"MapInWild loader, one simulated {args.tile}² tile (14 channels + mask)")
        print(f"  whole-tile sample {r['full_s'] * 1e3:8.1f} ms")
        print(f"  {args.crop}² crop sample  {r['crop_s'] * 1e3:8.1f} ms")
        print(f"  ratio whole/crop = {r['speedup']:.1f}x")
        if args.skip_loaders:
            return
        for name, kw in [("mapinwild", {"crop_size": 256}), ("bigearthnet", {}), ("sen12gum", {}),
                         ("spacenet7", {"crop_size": 64})]:
            r = bench_loader(tmp, name, None, args.samples, **kw)
            print(f"{name:12s} simulate {r['simulate_s']:6.2f} s   {r['len']:5d} samples   "
                  f"{r['samples_per_s']:7.1f} samples/s")


if __name__ == "__main__":
    main()
