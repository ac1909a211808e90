"""Time to first paint of `optinspect tui` at 2k and 100k tensors (headless, Textual's test driver).

Reports, per size: first paint (the first frame: summary bar and an empty table), rows shown (names and shapes
loaded, the table usable), and statistics complete; in a process where torch is already imported (the
in-process figures) and from a fresh interpreter's launch (cold). Goals: first paint within 0.35 s at any size,
rows within 1 s at 100k parameters.

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
    from optinspect.cli.common import few_collections
    from optinspect.tui.app import make_app

    few_collections()  # as `optinspect tui` sets the collector before the app starts
    from optinspect.tui.widgets.table import ParamTable

    t0 = time.perf_counter()
    app = make_app(path)
    marks: dict[str, float] = {}
    async with app.run_test(size=(120, 40)) as pilot:
        marks["first paint"] = time.perf_counter() - t0  # run_test returns after the first refresh
        while not app.query_one(ParamTable).rows:
            await asyncio.sleep(0.005)  # not pilot.pause: its forced screen updates take time from the loader
        await pilot.pause(0)  # the frame that shows them
        marks["rows shown"] = time.perf_counter() - t0
        from textual import events

        table = app.query_one(ParamTable)
        before, t_key = table.cursor, time.perf_counter()
        app.post_message(events.Key("down", None))  # the latency a user feels, while statistics load
        while table.cursor == before:
            await asyncio.sleep(0.002)
        marks["key latency while loading"] = time.perf_counter() - t_key
        while not app.loading_done:
            await pilot.pause(0.05)
        marks["statistics done"] = time.perf_counter() - t0
        await pilot.press("q")
    return marks


COLD = r"""
import sys, time, asyncio
t_start = float(sys.argv[1])
sys.path.insert(0, sys.argv[3])
from optinspect.cli import build_parser  # what `optinspect tui` imports before the app
from optinspect.tui.app import make_app

async def run():
    from optinspect.cli.common import few_collections
    few_collections()  # as `optinspect tui` does
    app = make_app(sys.argv[2])
    async with app.run_test(size=(120, 40)) as pilot:
        print(time.time() - t_start, flush=True)
        if sys.argv[4] == "rows":
            from optinspect.tui.widgets.table import ParamTable
            while not app.query_one(ParamTable).rows:
                await asyncio.sleep(0.005)
            await pilot.pause(0)
            print(time.time() - t_start, flush=True)
        await pilot.press("q")

asyncio.run(run())
"""


def cold_start(path: str, until: str = "paint") -> float:
    """Seconds from launching a fresh interpreter to the app's first frame, or to its rows shown (imports
    included: torch's, about 0.85 s here, is made in the loading thread after the rows are shown)."""
    import subprocess

    t = time.time()
    out = subprocess.run([sys.executable, "-c", COLD, repr(t), path, str(Path(__file__).resolve().parent.parent),
                          until], capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2000,100000")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            path = os.path.join(tmp, f"state_{n}.pt")
            make_state(path, n)
            import statistics

            marks = {"cold first paint (new process, median of 5)": statistics.median(cold_start(path)
                                                                                    for _ in range(5)),
                     "cold rows shown (median of 3)": statistics.median(cold_start(path, "rows") for _ in range(3))}
            marks.update(asyncio.run(measure(path)))
            print(f"{n:>7,} parameters ({3 * n:,} tensors): " + ", ".join(f"{k} {v:.2f} s" for k, v in marks.items()))


if __name__ == "__main__":
    main()
