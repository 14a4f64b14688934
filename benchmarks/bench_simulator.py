"""Simulator benchmark: seconds per scene by size (all modalities informative, and with planted settings that
draw an independent scene) and seconds per simulated dataset (default arguments).

Prints timings and ratios measured in one run. Not a test.

    python benchmarks/bench_simulator.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from fusionbook.data.scene import SceneKnobs, simulate_scene
from fusionbook.data.simulate import DATASETS, simulate


def main() -> None:
    simulate_scene(120, 0)  # warm-up
    per = {}
    for size in (120, 512, 1920):
        reps = 5 if size < 1920 else 1
        ts = []
        for k in range(reps):
            t = time.perf_counter()
            simulate_scene(size, k)
            ts.append(time.perf_counter() - t)
        per[size] = statistics.median(ts)
        print(f"scene {size:5d}²: {per[size] * 1e3:8.1f} ms")
    print(f"cost per pixel 1920² / 120²: {per[1920] / 1920**2 / (per[120] / 120**2):.2f}x")
    for informative in ("s1", "s2:0.5"):  # an independent scene for the other modalities (and blobs at 0.5)
        ts = []
        for k in range(5):
            t = time.perf_counter()
            simulate_scene(512, k, SceneKnobs(informative=informative))
            ts.append(time.perf_counter() - t)
        med = statistics.median(ts)
        print(f"scene   512² informative={informative!r}: {med * 1e3:8.1f} ms ({med / per[512]:.2f}x all informative)")
    with tempfile.TemporaryDirectory() as d:
        for name in DATASETS:
            t = time.perf_counter()
            root = simulate(name, Path(d) / name, seed=0)
            mb = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 2**20
            print(f"simulate {name:12s} (defaults): {time.perf_counter() - t:6.2f} s, {mb:7.1f} MB")


if __name__ == "__main__":
    main()
