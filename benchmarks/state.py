"""Statistics throughput of the state engine on a large synthetic optimizer state, in one run, against
(a) the naive path: torch.load the whole file, then whole-tensor ops for the same figures the engine reports
(checked: both paths' figures for the first parameters are compared), and (b) the raw read rate of the file.
Peak memory is the process's max RSS minus that of a process that only imports torch.

Goals (issue 5): >= 2.5 GB/s (>= 15x the naive path), first figures within 0.2 s, peak memory within 256 MiB
above `import torch`, whatever the file size. Each measurement runs in its own process.

    python benchmarks/state.py [--gb 3] [--dir /tmp/optinspect-bench] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIDE = 4096


def make_files(folder: Path, gb: float, fresh: bool) -> tuple[Path, Path]:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    pt, st = folder / f"state_{gb:g}gb.pt", folder / f"state_{gb:g}gb.safetensors"
    if pt.exists() and st.exists() and not fresh:
        return pt, st
    n_params = max(1, int(gb * 2**30 / (2 * 4 * SIDE * SIDE)))
    g = torch.Generator().manual_seed(0)
    state, flat = {}, {}
    for i in range(n_params):
        m = torch.randn(SIDE, SIDE, generator=g) * 1e-3
        v = m * m + 1e-8
        state[i] = {"step": torch.tensor(100.0), "exp_avg": m, "exp_avg_sq": v}
        flat[f"state.layer{i}.weight.exp_avg"] = m
        flat[f"state.layer{i}.weight.exp_avg_sq"] = v
    sd = {"state": state, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01,
                                            "params": list(range(n_params))}]}
    torch.save(sd, pt)
    save_file(flat, str(st))
    return pt, st


CHILD = r"""
import json, os, resource, sys, time
t0 = time.perf_counter()
import torch
mode, path = sys.argv[1], sys.argv[2]
sys.path.insert(0, sys.argv[3])
out = {}
if mode == "baseline":
    pass
elif mode == "engine":
    from optinspect.state.load import load_state
    from optinspect.state.analyse import build_report
    first = []
    t1 = time.perf_counter()
    ls = load_state(path)
    rep = build_report(ls, on_param=lambda r: first or first.append(time.perf_counter() - t1))
    out["seconds"] = time.perf_counter() - t1
    out["first"] = first[0] if first else None
    out["params"] = len(rep.params)
    figures = []
    for r in rep.params:
        for t in r.tensors:
            figures.append([t.key.split(".")[-1], t.mean, t.std, t.absmax, t.rms, t.zero_frac, t.nan, t.inf,
                            sum(1 for c in t.hist if c)])
        figures.append(["update_scale", r.update_scale_mean, r.update_scale_max])
    out["figures"] = figures[:6]
elif mode == "naive":
    # What a user writes without the engine: load everything, then whole-tensor ops for the same figures
    # the engine reports (mean, std, min, max, absmax, RMS, L2, zeros, NaN/Inf, the exponent histogram and
    # the update scale |m| / sqrt(v) where v > 0).
    t1 = time.perf_counter()
    sd = torch.load(path, weights_only=True)
    first = None
    figures = []
    for st in sd["state"].values():
        for key in ("exp_avg", "exp_avg_sq"):
            x = st[key].float()
            nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
            f = x[torch.isfinite(x)] if nan or inf else x
            mean, std = f.mean().item(), f.std(correction=0).item()
            lo, hi, l2 = f.min().item(), f.max().item(), f.norm().item()
            expo = torch.bitwise_right_shift(x.view(torch.int32), 23).bitwise_and_(0xFF)
            hist = torch.bincount(expo.reshape(-1), minlength=256)
            figures.append([key, mean, std, max(-lo, hi), l2 / f.numel() ** 0.5, int(hist[0]) / f.numel(),
                            nan, inf, hist.nonzero().numel()])
            first = first or time.perf_counter() - t1
        m, v = st["exp_avg"].float(), st["exp_avg_sq"].float()
        ratio = (m.abs() / v.sqrt())[v > 0]
        figures.append(["update_scale", ratio.mean().item(), ratio.max().item()])
    out["seconds"] = time.perf_counter() - t1
    out["first"] = first
    out["figures"] = figures[:6]
elif mode == "raw":
    buf = bytearray(64 << 20)
    t1 = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(buf):
            pass
    out["seconds"] = time.perf_counter() - t1
# VmHWM: this process's own peak (ru_maxrss would include the parent's at fork time)
out["maxrss"] = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps(out))
"""


def child(mode: str, path: Path, code: str = CHILD) -> dict:
    """One measurement in a fresh process (`code` gets mode, path, repository root; prints one JSON line)."""
    proc = subprocess.run([sys.executable, "-c", code, mode, str(path), str(ROOT)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def figure_gap(a: list, b: list) -> float:
    """Largest relative difference between the engine's and the naive path's figures (inf if the rows differ).
    Expect up to ~1.3e-3: torch's float32 reductions over whole 16M-element tensors drift (its norm() is off
    by 7e-4 to 1.3e-3 here against float64), while the engine adds per-chunk sums in float64."""
    if len(a) != len(b) or any(ra[0] != rb[0] or len(ra) != len(rb) for ra, rb in zip(a, b, strict=False)):
        return math.inf
    return max(abs(x - y) / max(abs(x), abs(y), 1e-30)
               for ra, rb in zip(a, b, strict=True) for x, y in zip(ra[1:], rb[1:], strict=True))


def median_run(mode: str, path: Path, n: int) -> dict:
    """The run with the median time of n (each in a new process); reports that run's figures."""
    runs = sorted((child(mode, path) for _ in range(max(1, n))), key=lambda r: r["seconds"])
    return runs[len(runs) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=3.0)
    ap.add_argument("--dir", default="/tmp/optinspect-bench")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="runs per path (the median is reported)")
    ap.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_only:  # in its own process, so the generator's memory does not count against the others
        pt, st = make_files(Path(args.dir), args.gb, args.fresh)
        print(pt, st)
        return
    t = time.perf_counter()
    gen = subprocess.run([sys.executable, __file__, "--make-only", "--gb", str(args.gb), "--dir", args.dir]
                         + (["--fresh"] if args.fresh else []), capture_output=True, text=True)
    if gen.returncode != 0:
        raise SystemExit(gen.stderr[-3000:])
    pt, st = (Path(x) for x in gen.stdout.split())
    print(f"files ready in {time.perf_counter() - t:.1f} s: {pt} ({pt.stat().st_size / 1e9:.2f} GB), "
          f"{st} ({st.stat().st_size / 1e9:.2f} GB); {os.cpu_count()} cores")
    base = child("baseline", pt)["maxrss"]
    print(f"baseline (import torch): max RSS {base / 2**20:.0f} MiB")
    rows = []
    for path in (st, pt):
        child("raw", path)  # warm the page cache first: every path below then reads from memory alike
    for path in (st, pt):
        size = path.stat().st_size
        raw = median_run("raw", path, args.repeat)
        rows.append((path.suffix, "raw read", size / raw["seconds"] / 1e9, None, raw["maxrss"] - base))
        eng = median_run("engine", path, args.repeat)
        rows.append((path.suffix, "optinspect engine", size / eng["seconds"] / 1e9, eng["first"], eng["maxrss"] - base))
        if path.suffix == ".pt" and not args.skip_naive:
            nv = median_run("naive", path, args.repeat)
            rows.append((path.suffix, "naive torch.load + stats", size / nv["seconds"] / 1e9, nv["first"],
                         nv["maxrss"] - base))
            gap = figure_gap(eng["figures"], nv["figures"])
            print(f"engine vs naive figures, first two parameters: largest relative difference {gap:.1e}"
                  f"{'' if gap < 2e-3 else '  DISAGREE'}")
    print(f"{'file':13s} {'path':26s} {'GB/s':>7s} {'first (s)':>10s} {'peak above torch':>17s}")
    for suffix, name, rate, first, extra in rows:
        shown = f"{first:.3f}" if first is not None else "-"
        print(f"{suffix:13s} {name:26s} {rate:7.2f} {shown:>10s} "
              f"{extra / 2**20:14.0f} MiB")
    eng_pt = next(r for r in rows if r[0] == ".pt" and r[1] == "optinspect engine")
    naive = next((r for r in rows if r[1].startswith("naive")), None)
    if naive:
        print(f"engine / naive throughput on .pt: {eng_pt[2] / naive[2]:.1f}x")


if __name__ == "__main__":
    main()
