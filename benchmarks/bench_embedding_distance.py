"""Cost of paper 2's embedding-distance influence values, in full-forward-pass equivalents.

Compares, on the same batch and model:

* ``full``  — one full forward pass ``model(x)``;
* ``ours``  — ``embedding_distance`` for N groups (clean encoder pass + one batched encoder pass over the
  N·B occluded copies, no decoder), and ``ours+out`` which also returns the clean output;
* ``naive N`` — the loop-over-modalities pattern of the authors: one full forward pass per occluded group
  (N passes; the clean embedding is assumed to come from the prediction pass that is run anyway).  This is the
  baseline of the target: ours ≤ 1 + 0.6·N full-forward equivalents and ≥ 1.8× faster than naive N;
* ``naive N+1`` — the same loop plus the clean full pass, compared with ``ours+out`` (both give the prediction
  and the N distances).

Example::

    python benchmarks/bench_embedding_distance.py --batch 4 --size 256 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from fusionbook.attribution import embedding_distance, embedding_l2, occlude
from fusionbook.modality import MAPINWILD


def naive_loop(model, x: torch.Tensor, layout, groups, fill) -> tuple[torch.Tensor, torch.Tensor]:
    """N+1 full forward passes; embeddings = bottleneck of each pass -> ((B, N) distances, clean output)."""
    feats = model.features(x)
    out, e0 = model.decode(feats), feats[-1]
    cols = []
    for g in groups:
        f = model.features(occlude(x, layout.indices(g), fill))
        model.decode(f)  # the authors' model returns (prediction, embedding) from every pass
        cols.append(embedding_l2(e0, f[-1]))
    return torch.stack(cols, 1), out


def naive_occluded_passes(model, x: torch.Tensor, layout, groups, fill) -> list[torch.Tensor]:
    """N full forward passes, one per occluded group (the clean pass is not counted)."""
    outs = []
    for g in groups:
        f = model.features(occlude(x, layout.indices(g), fill))
        model.decode(f)
        outs.append(f[-1])
    return outs


def timeit(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Wall times (s) of each function; repeats are interleaved so that drift hits all functions alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for f in fns.values():
            f()
    sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            sync()
            t = time.perf_counter()
            f()
            sync()
            times[k].append(time.perf_counter() - t)
    return times


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4, help="batch size B")
    p.add_argument("--size", type=int, default=256, help="crop size H = W")
    p.add_argument("--groups", default="s2,s1,worldcover,viirs", help="comma-separated MapInWild groups (N)")
    p.add_argument("--fill", default="zeros", help="occluder: zeros, ones, uniform, gaussian or a number")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--chunk-size", type=int, default=None, help="max samples per occluded encoder pass")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from fusionbook.models.unet import UNet

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    layout = MAPINWILD.layout()
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    fill = float(args.fill) if args.fill.lstrip("-").replace(".", "", 1).isdigit() else args.fill
    model = UNet(layout.n_channels, 1).to(device).eval()
    x = torch.randn(args.batch, layout.n_channels, args.size, args.size, device=device)
    n = len(groups)

    with torch.inference_mode():
        d_ours, y_ours = embedding_distance(model, x, layout, groups, fill, chunk_size=args.chunk_size,
                                            return_output=True)
        d_naive, y_naive = naive_loop(model, x, layout, groups, fill)
        if fill in ("zeros", "ones") or isinstance(fill, float):  # deterministic fills: results must agree
            assert torch.allclose(d_ours, d_naive, rtol=1e-3, atol=1e-3), (d_ours, d_naive)
            assert torch.allclose(y_ours, y_naive, rtol=1e-4, atol=1e-4)
        times = timeit(
            {
                "full": lambda: model(x),
                "ours": lambda: embedding_distance(model, x, layout, groups, fill, chunk_size=args.chunk_size),
                "ours+out": lambda: embedding_distance(model, x, layout, groups, fill, chunk_size=args.chunk_size,
                                                       return_output=True),
                "naive": lambda: naive_loop(model, x, layout, groups, fill),
                "naive_n": lambda: naive_occluded_passes(model, x, layout, groups, fill),
                "encoder": lambda: model.encode(x),
            },
            args.repeats,
            args.warmup,
            device,
        )

    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # least disturbed by other load on a shared machine
    print(f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"UNet({layout.n_channels}->1), batch {args.batch}x{layout.n_channels}x{args.size}x{args.size}, "
          f"N={n} groups {groups}, fill {args.fill!r}, chunk_size {args.chunk_size}, "
          f"{args.repeats} repeats (warm-up {args.warmup}); ratios to one full forward, median [min]")
    print(f"time(one full forward)               {med['full'] * 1e3:9.1f} ms [{best['full'] * 1e3:.1f} ms]")
    rows = [("encoder only", "encoder"), (f"ours, N={n}", "ours"), ("ours + clean output", "ours+out"),
            (f"naive, N={n} full passes", "naive_n"), (f"naive, N+1={n + 1} full passes", "naive")]
    for label, k in rows:
        print(f"time({label}) / full".ljust(37) + f"{med[k] / med['full']:9.3f}   [{best[k] / best['full']:.3f}]")
    budget = 1 + 0.6 * n
    for k, base, label in (("ours", "naive_n", f"ours vs naive N={n} (the target)"),
                           ("ours+out", "naive", f"ours + output vs naive N+1={n + 1}")):
        r, sp, sp_min = med[k] / med["full"], med[base] / med[k], best[base] / best[k]
        print(f"{label}: {r:.2f} full-forward equivalents (<= {budget:.1f}: {'PASS' if r <= budget else 'FAIL'}), "
              f"{sp:.2f}x faster [{sp_min:.2f}x] (>= 1.8x: {'PASS' if sp >= 1.8 else 'FAIL'})")
    return {"median": med, "min": best}

if __name__ == "__main__":
    main()
