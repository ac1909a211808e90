"""Step time of the bundled optimizers against the originals and torch.optim.AdamW(foreach=True), measured in
the same run, interleaved step by step, on the same tensors: transformers' Adafactor, pytorch_optimizer's Prodigy,
Persona's fp32 step written out as the original does it (`reference_persona.py`), and the trainer's own classes.

Where the original allocates fresh parameter-sized temporaries every step (Persona), its time depends on
whether glibc hands back the freed blocks (no page faults) or maps fresh memory each time. Which one happens
depends on the process's allocation history; `--recycle` pins the first case for the whole run (glibc's
MALLOC_* tunables, set before the process starts), the cheaper case for the original.

With `--trainer-checkout PATH` (a diffusion-chroma checkout; or OPTINSPECT_TRAINER_CHECKOUT) the trainer's own
classes (SCORN, REMASTER, Persona, EnhancedAdafactor, AdamW8bitKahan) are loaded from its `optimizers/` folder
and measured in the same run too. Workloads: `--workload full` (a transformer block's shapes: 14.7M parameters, or
about `--params M` million for scaling) or `lora` (`--lora-tensors` tensors alternating 3072x16 and 16x3072, as a
rank-16 LoRA of a Flux-size model), `--dtype float32|bfloat16`.
"equal" compares ours with the original after the same seeded steps (bit for bit; the maximum relative
difference otherwise).

    python benchmarks/optimizers.py [--steps 3] [--only scorn,remaster] [--small] [--recycle]
                                    [--workload full|lora] [--dtype bfloat16] [--trainer-checkout PATH]
                                    [--threads N] [--params 1|15|50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # optinspect, tests.trainer_oracle

import optinspect  # noqa: E402
import optinspect.specs  # noqa: E402

# glibc keeps freed blocks of any size in its heap instead of unmapping them
RECYCLE = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 34),
           "MALLOC_TOP_PAD_": str(1 << 28)}
TABLES = {
    "adafactor": {"type": "adafactor", "lr": 1e-4, "scale_parameter": False, "relative_step": False},
    "scorn": {"type": "scorn", "lr": 1e-4, "weight_decay": 0.01},
    "remaster": {"type": "remaster", "lr": 1e-4, "weight_decay": 0.01},
    "persona": {"type": "persona", "lr": 1e-4, "weight_decay": 0.01},
    "AdamW8bitKahan": {"type": "AdamW8bitKahan", "lr": 2e-5, "weight_decay": 0.01, "stabilize": False},
    "Prodigy": {"type": "Prodigy", "weight_decay": 0.05},
}


TRAINER_KEYS = {"adafactor": "adafactor", "scorn": "scorn", "remaster": "remaster", "persona": "persona",
                "AdamW8bitKahan": "adamw8bitkahan"}


def original_factory(name: str):
    """The original class where it is installable (test-only packages) or in the trainer checkout given."""
    if name in TRAINER_KEYS and os.environ.get("OPTINSPECT_TRAINER_CHECKOUT"):
        from optinspect.build import constructor_kwargs
        from tests.optimizers.record_bf16 import trainer_class

        klass = trainer_class(TRAINER_KEYS[name])
        return lambda ps: klass(ps, **constructor_kwargs({k: v for k, v in TABLES[name].items()}))
    try:
        if name == "adafactor":
            import transformers

            return lambda ps: transformers.Adafactor(ps, lr=1e-4, scale_parameter=False, relative_step=False)
        if name == "Prodigy":
            import pytorch_optimizer

            return lambda ps: pytorch_optimizer.Prodigy(ps, weight_decay=0.05)
    except ImportError:
        return None
    if WORKLOAD["dtype"] != torch.float32:  # the transcription below covers fp32 parameters only
        return None
    if name == "persona":
        from reference_persona import SpecPersona

        return lambda ps: SpecPersona(ps, lr=1e-4, weight_decay=0.01)
    if name == "persona-lean":
        from reference_persona import SpecPersona

        return lambda ps: SpecPersona(ps, lr=1e-4, weight_decay=0.01, lean=True)
    return None


WORKLOAD = {"kind": "full", "dtype": torch.float32, "lora": 1000, "width": 1024, "device": "cpu"}


def width_for(millions: float) -> int:
    """The full workload's width for about that many parameters (14 w^2 + 8 w), a multiple of 64."""
    return max(64, round((millions * 1e6 / 14) ** 0.5 / 64) * 64)


def make_params(small: bool) -> list[torch.nn.Parameter]:
    k = 4 if small else 1
    if WORKLOAD["kind"] == "lora":
        n = WORKLOAD["lora"] // k
        shapes = [(3072, 16) if i % 2 == 0 else (16, 3072) for i in range(n)]
    else:  # a transformer block's shapes: six square projections, two 4x MLP matrices, eight norms/biases
        w = WORKLOAD["width"] // k
        shapes = [(w, w)] * 6 + [(4 * w, w)] * 2 + [(w,)] * 8
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter((torch.randn(s, generator=g) * 0.02).to(WORKLOAD["device"], WORKLOAD["dtype"]))
            for s in shapes]


def set_grads(params, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=g) * 1e-3).to(p.device, p.dtype)


def equal_after(make_a, make_b, small: bool, steps: int = 3) -> str:
    """Both optimizers from the same start, the same gradients and the same seed: "equal", or the largest
    relative difference of the weights."""
    out = []
    for make in (make_a, make_b):
        ps = make_params(small)
        opt = make(ps)
        torch.manual_seed(0)
        for t in range(steps):
            set_grads(ps, 10 + t)
            opt.step()
        out.append([p.detach().float() for p in ps])
        del opt
    worst = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in zip(*out, strict=True))
    return "equal" if worst == 0 else f"differ {worst:.1e}"


def paired_times(ref, ref_params, opt, params, steps: int) -> tuple[float, float]:
    """Median step time of the reference and the candidate, interleaved step by step so that machine noise
    (a shared 2-core box) hits both alike."""
    set_grads(ref_params)
    set_grads(params)
    ref.step()
    opt.step()  # warm-up: state allocation
    for o in (ref, opt):  # ours tries its ways both ways on its first steps (TimedChoice): time the ways kept
        while deciding(o):
            o.step()
    tr, to = [], []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        ref.step()
        sync()
        t1 = time.perf_counter()
        opt.step()
        sync()
        t2 = time.perf_counter()
        tr.append(t1 - t0)
        to.append(t2 - t1)
    return statistics.median(tr), statistics.median(to)


def sync() -> None:
    """Wait for the device's queued work: a step's time on a GPU is its kernels', not their launches'."""
    if WORKLOAD["device"] != "cpu":
        torch.cuda.synchronize()


def deciding(opt) -> bool:
    """Whether ours is still trying its ways (the helper or not, then steps side by side or not)."""
    choosing = getattr(opt, "choosing", None)
    if choosing is not None:
        return choosing
    helper = getattr(opt, "_helper", None)
    return helper is not None and helper.deciding


def drawn(opt) -> str:
    """How this instance of ours ran its steps, once it had decided (see TimedChoice): parameters side by side, or
    in turn with the stochastic-rounding bits drawn ahead on the helper or in turn."""
    if getattr(getattr(opt, "_side", None), "choice", None):
        return ", side by side"
    choice = getattr(getattr(opt, "_helper", None), "choice", None)
    return "" if choice is None else ", bits drawn ahead on the helper" if choice else ", bits drawn in turn"


def state_bytes(opt) -> int:
    return sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
               if isinstance(v, torch.Tensor))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--only", default="")
    ap.add_argument("--small", action="store_true", help="1/16 of the parameters (quick look)")
    ap.add_argument("--recycle", action="store_true",
                    help="run with glibc recycling freed blocks (no page faults for the originals' temporaries)")
    ap.add_argument("--workload", choices=["full", "lora"], default="full")
    ap.add_argument("--lora-tensors", type=int, default=1000)
    ap.add_argument("--params", type=float, default=None,
                    help="millions of parameters for the full workload (scaling: 1, 15, 50); default 14.7")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--trainer-checkout", default=None, help="a diffusion-chroma checkout: its own classes too")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads for every optimizer (torch's default: one per physical core). With "
                         "fewer than the CPUs, ours draws its stochastic-rounding bits on an idle one")
    ap.add_argument("--device", default="cpu", help="cuda: the GPU workloads (Flux-size LoRA: --lora-tensors "
                    "1000; a 2B full fine-tune: --params 2000), against the originals and AdamW(fused) there")
    ap.add_argument("--compiled", action="store_true",
                    help="ours with its opt-in compiled step where it has one (Persona), against the same originals")
    ap.add_argument("--multi-tensor", action="store_true",
                    help="ours through its multi-tensor chains (the path off CPU), forced on here: what they cost "
                         "on CPU, checked equal all the same")
    args = ap.parse_args()
    try:
        torch.empty(1, device=args.device)
    except (RuntimeError, AssertionError) as e:
        sys.exit(f"device {args.device!r} is not available: {e}")
    if args.multi_tensor:
        from optinspect.optimizers import _common

        _common.MULTI_TENSOR_ON_CPU = True
        os.environ["OPTINSPECT_SIDE_BY_SIDE"] = "0"  # else the small tensors' steps run side by side, not chained
    if args.threads:
        torch.set_num_threads(args.threads)
    WORKLOAD.update(kind=args.workload, dtype=getattr(torch, args.dtype), lora=args.lora_tensors, device=args.device,
                    width=width_for(args.params) if args.params else 1024)
    if args.trainer_checkout:
        os.environ["OPTINSPECT_TRAINER_CHECKOUT"] = args.trainer_checkout
    if args.recycle and RECYCLE.keys() - os.environ.keys():
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **RECYCLE})

    def build(params, table):
        """Ours, with its compiled step where asked for and it has one."""
        spec = optinspect.specs.TYPES.get(table["type"].lower())
        compiled = args.compiled and spec is not None and "compiled" in spec.our_options
        return optinspect.build_optimizer(params, table, options={"compiled": True} if compiled else None)

    ref_params = make_params(args.small)
    n = sum(p.numel() for p in ref_params)
    ref = torch.optim.AdamW(ref_params, lr=1e-4, foreach=True)
    print(f"{args.workload}: {len(ref_params)} tensors, {n / 1e6:.1f}M {args.dtype} parameters, "
          f"{f'{torch.get_num_threads()} threads' if args.device == 'cpu' else 'on ' + args.device}"
          f"{', freed memory recycled' if args.recycle else ''}"
          f"{', ours through its multi-tensor chains' if args.multi_tensor else ''}"
          f"{', ours compiled where it can be' if args.compiled else ''}; reference AdamW(foreach), "
          f"{state_bytes(ref) / n if ref.state else 8.0:.1f} B/param")
    fused_params = make_params(args.small)
    fused = torch.optim.AdamW(fused_params, lr=1e-4, fused=True)
    print(f"{'optimizer':16s} {'ms/step':>9s} {'AdamW ms':>9s} {'x AdamW':>8s} {'x fused':>8s} {'B/param':>8s}  "
          "against the original, in the same run (x fused: against AdamW(fused=True), paired too)")
    for name, table in TABLES.items():
        if args.only and name.lower() not in args.only.lower().split(","):
            continue
        ps = make_params(args.small)
        opt = build(ps, table)
        t_ref, t = paired_times(ref, ref_params, opt, ps, args.steps)
        t_fused, t2 = paired_times(fused, fused_params, opt, ps, args.steps)
        ratio, to_fused = t / t_ref, t2 / t_fused
        notes = []
        for label, factory in ((name, original_factory(name)), ("lean", original_factory(f"{name}-lean"))):
            if factory is None or (label == "lean" and args.dtype != "float32"):  # an fp32-only transcription
                continue
            qs = make_params(args.small)
            rs = make_params(args.small)
            ours = build(rs, table)
            try:
                t_ours, t_orig = paired_times(ours, rs, factory(qs), qs, args.steps)
            except Exception as e:  # noqa: BLE001 - an original that cannot run here says why, the rest goes on
                notes.append(f"original failed: {type(e).__name__}: {str(e)[:80]}")
                continue
            finally:
                del rs, qs
            what = "ours/original" if label == name else "ours/lean whole-tensor bound"
            same = equal_after(lambda ps, t=table: build(ps, t), factory, args.small)
            notes.append(f"{what} = {t_ours / t_orig:.2f} ({t_orig * 1e3:.1f} ms), {same}{drawn(ours)}")
            del ours
        same_run = "; ".join(notes) or f"-{drawn(opt)}"
        print(f"{name:16s} {t * 1e3:9.1f} {t_ref * 1e3:9.1f} {ratio:8.2f} {to_fused:8.2f} {state_bytes(opt) / n:8.2f}  "
              f"{same_run}", flush=True)
        del opt, ps


if __name__ == "__main__":
    main()
