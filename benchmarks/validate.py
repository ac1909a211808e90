"""Whole-process time of `optinspect validate` against `check-jsonschema --schemafile` on the same files and
schema, measured in the same run (interleaved). Goal: optinspect at most 0.5x check-jsonschema's time, on one
file and on 50 in one call (what pre-commit hands over).

    python benchmarks/validate.py [--runs 15] [--files 50] [FILE]

Run it with the interpreter of a regular install (`pip install .`, as pre-commit builds its hook environment):
an editable install's import hooks add about 35 ms to every start.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file", nargs="?", default=str(ROOT / "examples" / "chroma.toml"))
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--files", type=int, default=1, help="copies of FILE checked in one call")
    args = ap.parse_args()
    files = [args.file]
    if args.files > 1:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="optinspect-validate-"))
        text = Path(args.file).read_text()
        files = []
        for i in range(args.files):  # each a little different, as a repository's configs are
            (folder / f"c{i}.toml").write_text(f"# run {i}\n" + text)
            files.append(str(folder / f"c{i}.toml"))
    bindir = Path(sys.executable).parent
    ours = [str(bindir / "optinspect")] if (bindir / "optinspect").exists() else [sys.executable, "-m", "optinspect"]
    cj = shutil.which("check-jsonschema", path=str(bindir)) or shutil.which("check-jsonschema")
    if cj is None:
        sys.exit("check-jsonschema is not installed (pip install check-jsonschema)")
    schema = str(ROOT / "schemas" / "config.schema.json")
    cmds = {"optinspect validate": [*ours, "validate", "--quiet", *files],
            "check-jsonschema": [cj, "--schemafile", schema, *files]}
    times: dict[str, list[float]] = {k: [] for k in cmds}
    codes: dict[str, set[int]] = {k: set() for k in cmds}
    for cmd in cmds.values():  # warm the OS caches once
        timed(cmd)
    for _ in range(args.runs):
        for name, cmd in cmds.items():
            t, rc = timed(cmd)
            times[name].append(t)
            codes[name].add(rc)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:22s} median {v * 1e3:7.1f} ms  (min {min(times[k]) * 1e3:.1f}, exit {sorted(codes[k])})")
    print(f"ratio optinspect / check-jsonschema = {med['optinspect validate'] / med['check-jsonschema']:.2f} "
          f"(goal <= 0.5) on {len(files)} file{'s' * (len(files) > 1)} like {args.file}")


if __name__ == "__main__":
    main()
