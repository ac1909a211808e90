"""Time to first paint of `optinspect tui` at 2k and 100k tensors (headless, Textual's test driver).

Reports, per size: first paint (the first frame: summary bar and an empty table), rows shown (the state's
index loaded, the table usable), and statistics complete. Goal: first paint within 0.35 s at any size.

    python benchmarks/tui.py [--sizes 2000,100000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_state(path: str, n: int) -> None:
    import torch

    g = torch.Generator().manual_seed(0)
    state = {i: {"step": torch.tensor(10.0), "exp_avg": torch.randn(16, generator=g),
                 "exp_avg_sq": torch.rand(16, generator=g)} for i in range(n)}
    torch.save({"state": state, "param_groups": [{"lr": 1e-4, "params": list(range(n))}]}, path)


async def measure(path: str) -> dict:
    from optinspect.tui.app import make_app
    from optinspect.tui.widgets.table import ParamTable

    t0 = time.perf_counter()
    app = make_app(path)
    marks: dict[str, float] = {}
    async with app.run_test(size=(120, 40)) as pilot:
        marks["first paint"] = time.perf_counter() - t0  # run_test returns after the first refresh
        while not app.query_one(ParamTable).rows:
            await pilot.pause(0.01)
        marks["rows shown"] = time.perf_counter() - t0
        before = app.keys_seen
        await pilot.press("down")
        marks["key answered"] = time.perf_counter() - t0
        assert app.keys_seen == before + 1
        while not app.loading_done:
            await pilot.pause(0.05)
        marks["statistics done"] = time.perf_counter() - t0
        await pilot.press("q")
    return marks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2000,100000")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            path = os.path.join(tmp, f"state_{n}.pt")
            make_state(path, n)
            marks = asyncio.run(measure(path))
            print(f"{n:>7,} tensors: " + ", ".join(f"{k} {v:.2f} s" for k, v in marks.items()))


if __name__ == "__main__":
    main()
