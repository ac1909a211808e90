"""`optinspect inspect` on a state of many small tensors (issue 18: 100k tensors), as a user runs it, against the
naive path in the same run: torch.load, then whole-tensor statistics per tensor (benchmarks/state.py's code).

Reported per path: seconds to the first line and to the first table row on stdout, total seconds, peak RSS of
that process (from wait4, so each figure is its own process's). Goals: total <= naive, first row <= 2 s,
peak <= 512 MiB; and a 1M one-element safetensors file within 30 s and 1 GiB, or refused as quickly.

    python benchmarks/many.py [--tensors 100000] [--dir /tmp/optinspect-bench]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from state import CHILD, ROOT  # noqa: E402 - the naive path, shared with the throughput benchmark


def make_files(folder: Path, tensors: int) -> tuple[Path, Path]:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    pt, tiny = folder / f"many_{tensors}.pt", folder / "tiny_1000000.safetensors"
    if not pt.exists():
        g = torch.Generator().manual_seed(0)
        state = {}
        for i in range(tensors // 2):  # LoRA-sized AdamW state: step, exp_avg, exp_avg_sq per parameter
            m = torch.randn(16, 8, generator=g) * 1e-3
            state[i] = {"step": torch.tensor(100.0), "exp_avg": m, "exp_avg_sq": m * m + 1e-8}
        torch.save({"state": state, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8,
                                                      "weight_decay": 0.01, "params": list(state)}]}, pt)
    if not tiny.exists():
        save_file({f"state.l{i}.exp_avg": torch.tensor([float(i)]) for i in range(1_000_000)}, str(tiny))
    return pt, tiny


def measure(argv: list[str]) -> dict:
    """Run a command with stdout piped; times of its first line and first table row, its own peak RSS."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    first = row = None
    lines = 0
    for line in proc.stdout:
        lines += 1
        now = time.perf_counter() - t
        first = first if first is not None else now
        if row is None and line.lstrip().startswith((b"0/", b"l0", b'{"index"', b'  {"index"')):
            row = now
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    return {"seconds": time.perf_counter() - t, "first": first, "row": row, "lines": lines,
            "rss": usage.ru_maxrss * 1024, "exit": os.waitstatus_to_exitcode(status), "stderr": err.decode()[-300:]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tensors", type=int, default=100_000)
    ap.add_argument("--dir", default="/tmp/optinspect-bench")
    ap.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_only:  # in its own process: a child forked from a 3 GB parent would report that as its peak
        make_files(Path(args.dir), args.tensors)
        return
    subprocess.run([sys.executable, __file__, "--make-only", "--tensors", str(args.tensors), "--dir", args.dir],
                   check=True)
    folder = Path(args.dir)
    pt, tiny = folder / f"many_{args.tensors}.pt", folder / "tiny_1000000.safetensors"
    cli = [sys.executable, "-m", "optinspect", "inspect"]
    runs = {
        "naive torch.load + stats": measure([sys.executable, "-c", CHILD, "naive", str(pt), str(ROOT)]),
        "optinspect inspect": measure(cli + [str(pt)]),
        "optinspect inspect --json": measure(cli + ["--json", str(pt)]),
        "inspect, 1M one-element tensors": measure(cli + [str(tiny)]),
    }
    print(f"{args.tensors:,} tensors in {pt} ({pt.stat().st_size / 1e6:.0f} MB); {os.cpu_count()} cores")
    print(f"{'path':34s} {'first line':>10s} {'first row':>10s} {'total':>8s} {'peak RSS':>10s}  exit")
    for name, r in runs.items():
        def s(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f} s"
        print(f"{name:34s} {s(r['first']):>10s} {s(r['row']):>10s} {s(r['seconds']):>8s} "
              f"{r['rss'] / 2**20:7.0f} MiB  {r['exit']}" + (f"  {r['stderr'].strip()}" if r["exit"] else ""))
    naive = runs["naive torch.load + stats"]["seconds"]
    for name in ("optinspect inspect", "optinspect inspect --json"):
        print(f"{name} / naive: {runs[name]['seconds'] / naive:.2f}x")


if __name__ == "__main__":
    main()
