"""Fuzz optinspect's readers with seeded mutations of real files, each case a subprocess under limits.

    python tests/fuzz_inputs.py --cases 500 --seed 1 [--jobs 2] [--keep DIR]

Seeds are made here by the libraries that write them: a torch.save zip and a legacy pickle of an optimizer
state_dict, a .safetensors state, a DeepSpeed checkpoint folder (`latest`, global_step*/), and trainer configs.
Each case mutates one (bit flips, bytes set to 0x00/0xff/0x7f/0x80, truncation, insertion, a duplicated
range, bytes aimed at the pickle or the safetensors header) and runs one command on it in a child process. A
case fails when the child runs past the time limit, peaks above the memory limit (its own peak RSS, from
wait4), exits other than 0/1/2, prints a traceback or a raw control character, or ends in the CLI's
last-resort "unexpected" line (an input this reader should have named).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIME_LIMIT = 30.0
RSS_LIMIT_MIB = 1024
CONTROL = {chr(c) for c in range(32) if chr(c) not in "\n\t"} | {"\x7f"}


@dataclass
class Outcome:
    case: str
    command: list[str]
    rc: int | None
    seconds: float
    rss_mib: float
    problem: str = ""


def make_seeds(folder: Path) -> dict[str, Path]:
    """Real files, written by torch, our own writer and by hand as trainers write them."""
    import torch

    from optinspect.state.save import save

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.LayerNorm(8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
    sd = opt.state_dict()
    seeds = {"zip": folder / "zip.pt", "legacy": folder / "legacy.pt", "st": folder / "state.safetensors"}
    torch.save(sd, seeds["zip"])
    torch.save(sd, seeds["legacy"], _use_new_zipfile_serialization=False)
    save(str(seeds["st"]), sd, ["0.weight", "0.bias", "1.weight", "1.bias"], {"status": "healthy"},
         optimizer_type="adamw")
    ds = folder / "deepspeed"
    (ds / "global_step2").mkdir(parents=True)
    (ds / "latest").write_text("global_step2")
    torch.save({"optimizer": sd, "ds_version": "0.15.0", "global_steps": 2,
                "param_shapes": [{"0.weight": torch.Size([8, 16]), "0.bias": torch.Size([8]),
                                  "1.weight": torch.Size([8]), "1.bias": torch.Size([8])}]},
               ds / "global_step2" / "mp_rank_00_model_states.pt")
    seeds["ds"] = ds / "global_step2" / "mp_rank_00_model_states.pt"
    seeds["ds_latest"] = ds / "latest"
    for name in ("chroma.toml", "broken.toml"):
        seeds[name] = ROOT / "examples" / name
    return seeds


def _target(data: bytes, rnd: random.Random, kind: str) -> tuple[int, int]:
    """A byte range to aim at: the pickle of a zip, the header of safetensors, else anywhere."""
    if kind in ("zip", "ds"):
        at = data.find(b"data.pkl")
        if at > 0 and rnd.random() < 0.7:
            return at + 38, min(len(data), at + 38 + 600)
    if kind == "st" and len(data) > 8 and rnd.random() < 0.7:
        return 8, min(len(data), 8 + int.from_bytes(data[:8], "little"))
    return 0, len(data)


def mutate(data: bytes, rnd: random.Random, kind: str) -> bytes:
    buf = bytearray(data)
    for _ in range(rnd.choice((1, 1, 2, 4, 16))):
        lo, hi = _target(bytes(buf), rnd, kind)
        if hi <= lo:
            break
        i = rnd.randrange(lo, hi)
        op = rnd.randrange(7)
        if op == 0:
            buf[i] ^= 1 << rnd.randrange(8)
        elif op == 1:
            buf[i] = rnd.choice((0x00, 0xFF, 0x7F, 0x80, 0x1B))
        elif op == 2:
            del buf[i:]
        elif op == 3:
            buf[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 16)))
        elif op == 4:
            j = min(len(buf), i + rnd.randrange(1, 64))
            buf[i:i] = buf[i:j]
        elif op == 5:
            del buf[i:min(len(buf), i + rnd.randrange(1, 32))]
        else:  # a digit made much larger or negative (shapes, offsets, lengths in text headers)
            if chr(buf[i]).isdigit():
                buf[i:i + 1] = rnd.choice((b"99999999999999999999", b"-1", b"1e400", b"0.5"))
    return bytes(buf)


def _commands(kind: str, path: Path, rnd: random.Random) -> list[list[str]]:
    if kind.endswith(".toml"):
        return [["validate", str(path)], ["validate", "--format", rnd.choice(["json", "github", "sarif"]),
                                           str(path)]]
    target = path.parent.parent if kind in ("ds", "ds_latest") else path
    return [["inspect", str(target)], ["inspect", str(target), "--json"], ["diff", str(target), str(target)]]


# The child is started by a small launcher that reports the child's wait4 figures: a process forked from a large
# one (pytest, late in the suite) inherits the parent's peak RSS as its own ru_maxrss, through fork and exec.
_LAUNCHER = r"""
import json, os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
child.returncode = os.waitstatus_to_exitcode(status)
os.write(int(sys.argv[1]), json.dumps([child.returncode, usage.ru_maxrss]).encode())
"""


def run_case(args: list[str]) -> tuple[int | None, float, float, str, str]:
    """Run `python -m optinspect ARGS` with its own peak RSS (wait4, read by a small launcher); kill it past the
    time limit."""
    import json

    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "COLUMNS": "200"}
    report_r, report_w = os.pipe()
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(report_w), sys.executable, "-m", "optinspect",
                             *args], stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True, pass_fds=(report_w,))
    os.close(report_w)
    rc, rss_kib = None, 0
    while proc.poll() is None:
        if time.monotonic() - start > TIME_LIMIT:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.02)
    with os.fdopen(report_r, "rb") as fh:
        report = fh.read()
    if report:
        rc, rss_kib = json.loads(report)
    seconds = time.monotonic() - start
    out.seek(0)
    err.seek(0)
    return rc, seconds, rss_kib / 1024, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")


def judge(rc, seconds, rss, out, err, *, json_out: bool) -> str:
    if rc is None:
        return f"ran past {TIME_LIMIT:.0f} s"
    if rc not in (0, 1, 2):
        return f"exit {rc}"
    if rss > RSS_LIMIT_MIB:
        return f"peak RSS {rss:.0f} MiB"
    if "Traceback" in out + err:
        return "traceback"
    if re.search(r"optinspect: error: unexpected [A-Z]\w*:", err):  # the CLI's last resort, not a named error
        return "last-resort error: " + err.strip().splitlines()[-1][:200]
    text = err + ("" if json_out else out)
    if any(c in CONTROL for c in text):
        return "raw control character in the output"
    if rc == 2 and len(err.strip().splitlines()) > 1 and "optinspect: error:" in err:
        return "more than one error line"
    return ""


def fuzz(cases: int, seed: int, jobs: int = 2, keep: Path | None = None) -> list[Outcome]:
    work = Path(tempfile.mkdtemp(prefix="optinspect-fuzz-"))
    try:
        seeds = make_seeds(work / "seeds")
        kinds = sorted(seeds)
        rnd = random.Random(seed)
        plan = []
        for n in range(cases):
            kind = kinds[n % len(kinds)]
            case_dir = work / f"case{n:05d}"
            src = seeds[kind]
            if kind in ("ds", "ds_latest"):
                shutil.copytree(seeds["ds"].parent.parent, case_dir / "deepspeed")
                target = case_dir / "deepspeed" / src.relative_to(seeds["ds"].parent.parent)
            else:
                case_dir.mkdir()
                target = case_dir / src.name
            target.write_bytes(mutate(src.read_bytes(), rnd, kind))
            plan.append((f"{kind}#{n} seed {seed}", case_dir, target, rnd.choice(_commands(kind, target, rnd))))

        def one(item) -> Outcome:
            name, _case_dir, _target, command = item
            rc, seconds, rss, out, err = run_case(command)
            json_out = "--json" in command or "json" in command or "sarif" in command
            return Outcome(name, command, rc, seconds, rss, judge(rc, seconds, rss, out, err, json_out=json_out))

        with ThreadPoolExecutor(jobs) as pool:
            outcomes = list(pool.map(one, plan))
        if keep:
            for o, (_, case_dir, _, _) in zip(outcomes, plan, strict=True):
                if o.problem:
                    dest = keep / o.case.replace("#", "_").replace(" ", "_")
                    shutil.copytree(case_dir, dest, dirs_exist_ok=True)
        return outcomes
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="copy failing cases here")
    args = ap.parse_args()
    outcomes = fuzz(args.cases, args.seed, args.jobs, args.keep)
    bad = [o for o in outcomes if o.problem]
    for o in bad:
        print(f"FAIL {o.case}: {o.problem}  ({' '.join(o.command[:1])}, rc {o.rc}, {o.seconds:.1f} s, "
              f"{o.rss_mib:.0f} MiB)")
    worst_t = max(o.seconds for o in outcomes)
    worst_m = max(o.rss_mib for o in outcomes)
    print(f"{len(outcomes) - len(bad)} passed, {len(bad)} failed (slowest {worst_t:.1f} s, peak RSS {worst_m:.0f} MiB)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
