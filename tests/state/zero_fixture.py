"""Writes DeepSpeed checkpoints of one small training at ZeRO stages 0-3 on two CPU ranks (gloo on loopback):
`python tests/state/zero_fixture.py OUT [WORLD]` makes OUT/stage0 .. OUT/stage3. Used by test_zero.py."""

from __future__ import annotations

import os
import sys
import warnings


def _run(rank: int, world: int, out: str, port: int) -> None:
    warnings.simplefilter("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import deepspeed
    import deepspeed.comm.torch
    import torch

    # DeepSpeed would compile a shared-memory all-reduce for CPU ranks first (a C++ build, tens of seconds, a
    # compiler needed); gloo alone does the job for a test
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None  # (deepspeed.comm.torch is torch itself)
    deepspeed.init_distributed(dist_backend="gloo")
    for stage in range(4):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.Linear(24, 5))  # 1109 elements: uneven
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        cfg = {"train_batch_size": 2 * world, "train_micro_batch_size_per_gpu": 2,
               "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True}
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
        g = torch.Generator().manual_seed(1 + rank)
        for _ in range(3):
            engine.backward(engine(torch.randn(2, 40, generator=g)).square().mean())
            engine.step()
        engine.save_checkpoint(os.path.join(out, f"stage{stage}"))
    # Leave without running the C++ destructors of gloo's and DeepSpeed's threads, which can abort the process
    # at interpreter exit ("terminate called without an active exception") once everything is saved.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    world = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    mp.spawn(_run, args=(world, sys.argv[1], port), nprocs=world)
