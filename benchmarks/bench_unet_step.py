"""Training-step throughput of paper 2's 17 M-parameter U-Net (`fusionbook.models.UNet`).

One step = forward, L1 loss, backward, AdamW update, on random (batch, 14, size, size) inputs.
Variants (all measured in the same run, from identical initial weights):

* ``fp32``     eager, float32, contiguous (NCHW) memory format;
* ``cl_bf16``  channels_last + autocast bfloat16;
* ``cl_fp16``  channels_last + autocast float16 with gradient scaling (CUDA only).

Defaults: CPU runs ``fp32``; CUDA runs all three and prints each variant's speed-up over ``fp32``.

    .venv/bin/python benchmarks/bench_unet_step.py                 # CPU, batch 2, 14x128x128
    .venv/bin/python benchmarks/bench_unet_step.py --device cuda --batch 16 --size 256
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    from fusionbook.models import UNet
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fusionbook.models import UNet

VARIANTS = {
    "fp32": (torch.contiguous_format, None),
    "cl_bf16": (torch.channels_last, torch.bfloat16),
    "cl_fp16": (torch.channels_last, torch.float16),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_variant(base: UNet, variant: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Time ``args.steps`` training steps after ``args.warmup`` untimed ones; returns samples/s etc."""
    fmt, amp_dtype = VARIANTS[variant]
    if amp_dtype is torch.float16 and device.type != "cuda":
        raise ValueError(f"variant {variant!r} (float16 autocast + gradient scaling) needs --device cuda")
    model = copy.deepcopy(base).to(device).to(memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, args.channels, args.size, args.size, generator=gen).to(device)
    y = torch.rand(args.batch, 1, args.size, args.size, generator=gen).to(device)
    x = x.contiguous(memory_format=fmt)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = torch.nn.functional.l1_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.detach()

    for _ in range(args.warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    total = sum(times)
    out = {
        "variant": variant,
        "samples_per_s": args.batch * args.steps / total,
        "ms_per_step_mean": 1e3 * total / args.steps,
        "ms_per_step_median": 1e3 * statistics.median(times),
        "ms_per_step_min": 1e3 * min(times),
        "final_loss": float(loss),
    }
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2, help="samples per step (default 2)")
    p.add_argument("--size", type=int, default=128, help="input height = width (default 128)")
    p.add_argument("--channels", type=int, default=14, help="input channels (default 14, the MapInWild stack)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per variant (default 2)")
    p.add_argument("--device", default="auto", help="'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when available)")
    p.add_argument("--variants", default=None, help=f"comma-separated subset of {list(VARIANTS)}")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.variants.split(",") if args.variants else (list(VARIANTS) if device.type == "cuda" else ["fp32"])
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; valid: {list(VARIANTS)}")
    if "cl_fp16" in names and device.type != "cuda":
        p.error("--variants: cl_fp16 (float16 autocast + gradient scaling) needs a CUDA device")
    if min(args.batch, args.size, args.steps) < 1 or args.warmup < 0:
        p.error("--batch, --size and --steps must be ≥ 1 and --warmup ≥ 0")
    if device.type == "cuda" and "fp32" in names:
        # the fp32 baseline is true fp32 (no TF32 tensor-core shortcut)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True

    torch.manual_seed(0)
    base = UNet(args.channels)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    n_params = sum(q.numel() for q in base.parameters())
    print(f"UNet({args.channels}) {n_params:,} params | device {device} ({dev_name}) | "
          f"torch {torch.__version__} | threads {torch.get_num_threads()} | batch {args.batch} | "
          f"{args.channels}x{args.size}x{args.size} | {args.warmup} warm-up + {args.steps} timed steps")
    results = [bench_variant(base, n, args, device) for n in names]
    ref = next((r for r in results if r["variant"] == "fp32"), None)
    print(f"{'variant':<9} {'samples/s':>10} {'mean ms':>9} {'median ms':>10} {'min ms':>8} {'vs fp32':>8}")
    for r in results:
        if ref is not None:
            r["speedup_vs_fp32"] = r["samples_per_s"] / ref["samples_per_s"]
        ratio = f"{r['speedup_vs_fp32']:.2f}x" if ref is not None else "-"
        print(f"{r['variant']:<9} {r['samples_per_s']:>10.2f} {r['ms_per_step_mean']:>9.1f} "
              f"{r['ms_per_step_median']:>10.1f} {r['ms_per_step_min']:>8.1f} {ratio:>8}")
    if args.json:
        meta = {**vars(args), "json": str(args.json), "device_name": dev_name, "torch": torch.__version__}
        args.json.write_text(json.dumps({"config": meta, "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
