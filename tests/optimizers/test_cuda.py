"""On a GPU (skipped without one): ours on CUDA, where the multi-tensor chains are the default path, against the
originals' recorded CPU trajectories within the parity gate, and the chains against the same steps tensor by
tensor. CUDA reductions split their work unlike CPU ones, so bits are not asked for: the gate's displacement-
relative deviation (5e-4 of how far each tensor moved) is. OPTINSPECT_TEST_DEVICE=cpu runs the same checks on
CPU (the harness itself, checked without a GPU)."""

import os

import pytest
import torch

import optinspect
import optinspect.optimizers._common as C

from . import golden as G
from .test_behaviour import TABLES, grad

DEVICE = os.environ.get("OPTINSPECT_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a GPU")

GATE = 5e-4


def _disp_rel(got: list[torch.Tensor], want: list[torch.Tensor], start: list[torch.Tensor]) -> float:
    """The largest deviation of a tensor from its expected value, relative to how far that moved from its start."""
    worst = 0.0
    for g, w, s in zip(got, want, start, strict=True):
        moved = float((w.double() - s.double()).abs().max())
        off = float((g.detach().cpu().double() - w.double()).abs().max())
        worst = max(worst, off / moved if moved > 0 else (0.0 if off == 0 else float("inf")))
    return worst


# bitsandbytes' CUDA kernels round 8-bit codes unlike its CPU ones: the CPU recording is no oracle there
@pytest.mark.parametrize("case", [c for c in G.fp32_cases() if "8bit" not in c])
def test_golden_trajectories_on_cuda_within_the_gate(case):
    meta, gold = G.load(case)
    start = [gold[f"init.{n}"] for n in G.NAMES]
    params = [torch.nn.Parameter(t.clone().to(DEVICE)) for t in start]
    opt = optinspect.build_optimizer(params, G.table(meta))
    torch.manual_seed(0)
    for t in range(1, meta["n_steps"] + 1):
        for n, p in zip(G.NAMES, params, strict=True):
            key = f"grad.{t}.{n}"
            p.grad = gold[key].clone().to(DEVICE) if key in gold else None
        opt.step()
    final = [gold[f"param.{meta['n_steps']}.{n}"] for n in G.NAMES]
    assert _disp_rel(params, final, start) <= GATE


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(TABLES))
def test_chains_on_cuda_agree_with_tensor_by_tensor(name, dtype, monkeypatch):
    """MULTI_TENSOR = 0 makes every batch one tensor: the per-tensor path on the GPU."""
    g = torch.Generator().manual_seed(0)
    start = [(torch.randn(s, generator=g) * 0.1).to(dtype) for s in [(256, 16), (16, 256)] * 8 + [(300,)]]
    runs = []
    for cap in (C.MULTI_TENSOR, 0):
        monkeypatch.setattr(C, "MULTI_TENSOR", cap)
        params = [torch.nn.Parameter(t.clone().to(DEVICE)) for t in start]
        opt = optinspect.build_optimizer(params, TABLES[name])
        torch.manual_seed(0)
        for t in range(1, 8):
            for p in params:
                p.grad = grad(p.detach().cpu(), t).to(DEVICE)
            opt.step()
        runs.append([p.detach().cpu().float() for p in params])
    assert _disp_rel(runs[0], runs[1], [t.float() for t in start]) <= GATE
