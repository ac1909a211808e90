"""Reading a DeepSpeed ZeRO-2 checkpoint of two ranks (written by DeepSpeed itself on CPU, gloo): optinspect's
per-parameter statistics, rebuilt from both ranks' partitions without concatenating them, against the naive merge
(torch.load both rank files whole, concatenate each moment, slice the parameters) in the same run, with the first
parameter's figures compared. Peak memory is the process's VmHWM minus that of a process that only imports torch.

Goals (issue "state reading meets the files real libraries write"): >= 1 GB/s over the moments' bytes, peak
memory within 256 MiB above `import torch`, on a checkpoint of >= 1 GB.

    python benchmarks/zero.py [--layers 8] [--width 4096] [--dir /tmp/optinspect-bench] [--fresh]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from state import child  # noqa: E402 - the measuring harness of the plain-state benchmark

WRITER = r"""
import os, sys, warnings
warnings.simplefilter("ignore")
def run(rank, world, out, port, layers, width):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import deepspeed, torch
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cfg = {"train_batch_size": 2 * world, "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 2},
           "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    g = torch.Generator().manual_seed(1 + rank)
    for _ in range(2):
        engine.backward(engine(torch.randn(2, width, generator=g)).square().mean())
        engine.step()
    engine.save_checkpoint(out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    os._exit(0)
if __name__ == "__main__":
    import socket, torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run, args=(2, sys.argv[1], port, int(sys.argv[2]), int(sys.argv[3])), nprocs=2)
"""

CHILD = r"""
import glob, json, math, os, sys, time
import torch
mode, folder = sys.argv[1], sys.argv[2]
sys.path.insert(0, sys.argv[3])
out = {}
if mode == "baseline":  # only `import torch`
    pass
elif mode == "engine":
    from optinspect.state.load import load_state
    from optinspect.state.analyse import build_report
    t = time.perf_counter()
    rep = build_report(load_state(folder))
    out["seconds"] = time.perf_counter() - t
    out["bytes"] = sum(s.bytes for r in rep.params for s in r.tensors if s.key in ("exp_avg", "exp_avg_sq"))
    r = rep.params[0]
    out["first"] = [r.name, r.first_rms, r.second_rms]
elif mode == "naive":
    t = time.perf_counter()
    step = sorted(glob.glob(os.path.join(folder, "global_step*")))[-1]
    files = sorted(glob.glob(os.path.join(step, "zero_pp_rank_*_optim_states.pt")),
                   key=lambda p: int(p.split("zero_pp_rank_")[1].split("_")[0]))
    meta = torch.load(os.path.join(step, "mp_rank_00_model_states.pt"), weights_only=False)
    osds = [torch.load(f, weights_only=False)["optimizer_state_dict"] for f in files]
    moments = {}
    for key in ("exp_avg", "exp_avg_sq"):
        moments[key] = torch.cat([o["base_optimizer_state"]["state"][0][key][:o["single_partition_of_fp32_groups"][0]
                                  .numel()] for o in osds])
    name, shape = next(iter(meta["param_shapes"][0].items()))
    n = math.prod(shape)
    rms = [moments[k][:n].double().pow(2).mean().sqrt().item() for k in ("exp_avg", "exp_avg_sq")]
    out["seconds"] = time.perf_counter() - t
    out["first"] = [name, *rms]
out["maxrss"] = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--dir", default="/tmp/optinspect-bench")
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args()
    folder = Path(args.dir) / f"zero2_{args.layers}x{args.width}"
    if args.fresh or not (folder / "latest").exists():
        env = {**os.environ, "DS_ACCELERATOR": "cpu"}
        folder.parent.mkdir(parents=True, exist_ok=True)
        script = folder.parent / "zero_writer.py"  # spawned ranks import their function from a file
        script.write_text(WRITER)
        proc = subprocess.run([sys.executable, str(script), str(folder), str(args.layers), str(args.width)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not (folder / "latest").exists():
            raise SystemExit(f"writing the checkpoint failed:\n{proc.stderr[-3000:]}")
    size = sum(p.stat().st_size for p in folder.rglob("*.pt"))
    base = child("baseline", folder, CHILD)["maxrss"]
    engine, naive = child("engine", folder, CHILD), child("naive", folder, CHILD)
    gap = max(abs(a - b) / max(abs(a), abs(b), 1e-30) for a, b in zip(engine["first"][1:], naive["first"][1:],
                                                                       strict=True))
    same = engine["first"][0] == naive["first"][0] and gap < 1e-5  # chunked float32 dots vs one float64 pass
    print(f"checkpoint {size / 2**30:.2f} GiB on disk, 2 ranks, ZeRO-2; moments {engine['bytes'] / 2**30:.2f} GiB")
    print(f"first parameter {engine['first'][0]}: engine and naive merge agree to {gap:.1e} "
          f"({'equal' if same else 'DIFFER'})")
    print(f"{'path':24s} {'seconds':>8s} {'GB/s':>7s} {'peak above torch':>17s}")
    for name, r in (("optinspect engine", engine), ("naive load + concat", naive)):
        print(f"{name:24s} {r['seconds']:8.2f} {engine['bytes'] / 1e9 / r['seconds']:7.2f} "
              f"{(r['maxrss'] - base) / 2**20:14.0f} MiB")
    print(f"engine / naive: {naive['seconds'] / engine['seconds']:.1f}x faster, "
          f"{(naive['maxrss'] - base) / max(engine['maxrss'] - base, 1):.1f}x less memory above torch")
    if not same or math.isnan(gap):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
