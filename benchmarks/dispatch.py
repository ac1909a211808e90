"""What one optimizer step asks of a GPU, counted on CPU: torch operations dispatched (each one kernel launch or
more on CUDA; views launch none) and host syncs (a tensor's value read into Python: on CUDA the host waits for
every queued kernel), for ours tensor by tensor, ours through its multi-tensor chains (the path off CPU), and
the original in the same run. No GPU is needed to count them; what they cost is the GPU's to say.

    python benchmarks/dispatch.py [--pairs 100] [--dtype bfloat16] [--trainer-checkout PATH]

A multi-tensor (torch._foreach_*) call counts once; on CUDA it is one launch per ~100 small tensors. Ours runs
its off-CPU branches where it has them (no helper thread drawing random bits, no step run side by side, the
rounding's repair of NaN and overflow always applied).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections import Counter
from pathlib import Path

os.environ["OPTINSPECT_SIDE_BY_SIDE"] = "0"  # CPU-only ways of running a step: never on CUDA
os.environ["OPTINSPECT_BITS_AHEAD"] = "0"

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_optimizers", Path(__file__).with_name("optimizers.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

import optinspect  # noqa: E402
from optinspect.optimizers import _common, _rounding, scorn  # noqa: E402

# Off CPU a stochastic rounding never asks whether its tensor holds NaN or values beyond bf16's range (that would
# sync): it repairs those always. Counted as it runs there.
_rounding._may_carry_badly = lambda source: True


class Count(TorchDispatchMode):
    """Operations that run (views aside), multi-tensor calls among them, and host syncs."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            name = func.overloadpacket.__name__
            self.ops["sync" if name == "_local_scalar_dense" else "foreach" if name.startswith("_foreach_")
                     else "op"] += 1
        return func(*args, **(kwargs or {}))


def counted(make, multi: bool, steps: int = 2) -> Counter:
    """One step's counts, after `steps` to build the state and settle any choices."""
    _common.MULTI_TENSOR_ON_CPU = scorn.BATCHED_NS_ON_CPU = multi  # the chains as they run off CPU
    params = bench.make_params(small=False)
    opt = make(params)
    torch.manual_seed(0)
    for t in range(steps):
        bench.set_grads(params, 10 + t)
        opt.step()
    bench.set_grads(params, 99)
    with Count() as c:
        opt.step()
    _common.MULTI_TENSOR_ON_CPU = scorn.BATCHED_NS_ON_CPU = False
    return c.ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=100, help="LoRA pairs (3072x16 and 16x3072); Flux has ~500")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    ap.add_argument("--trainer-checkout", default=None, help="a diffusion-chroma checkout: its own classes too")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    if args.trainer_checkout:
        os.environ["OPTINSPECT_TRAINER_CHECKOUT"] = args.trainer_checkout
    bench.WORKLOAD.update(kind="lora", dtype=getattr(torch, args.dtype), lora=2 * args.pairs)
    n = 2 * args.pairs
    print(f"LoRA, {n} {args.dtype} tensors: per step, operations (multi-tensor calls among them) and host syncs")
    print(f"{'optimizer':16s} {'ours, tensor by tensor':>26s} {'ours, chains':>22s} {'original':>22s}")
    for name, table in bench.TABLES.items():
        if args.only and name.lower() not in args.only.lower().split(","):
            continue
        cells = []
        for make, multi in ((lambda ps, t=table: optinspect.build_optimizer(ps, t), False),
                            (lambda ps, t=table: optinspect.build_optimizer(ps, t), True),
                            (bench.original_factory(name), False)):
            if make is None:
                cells.append(f"{'-':>22s}")
                continue
            c = counted(make, multi)
            ops = c["op"] + c["foreach"]
            cells.append(f"{ops:7d} ({c['foreach']:4d}) {c['sync']:5d} sync")
        print(f"{name:16s} {cells[0]:>26s} {cells[1]:>22s} {cells[2]:>22s}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
