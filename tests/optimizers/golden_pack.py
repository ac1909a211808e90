"""Pack the originals' recorded trajectories (the `golden/data` folder handed to the project) into the compact
copy the suite replays: `tests/optimizers/golden_data/`. A maintenance script, never run by the suite.

    python tests/optimizers/golden_pack.py PATH/TO/golden/data    # writes, then re-reads and checks every value

What is kept, and how:
* per case: the [optimizer] table, shapes, steps; the initial parameters; every step's gradient; the final
  parameters, final state, final param-group values and the per-step scalar traces (reset counters, Prodigy's d),
  all exact;
* the parameters after each intermediate step as a SHA-256 digest of their bytes (a bit-exact check; the
  final step's values are kept whole, so a failure can still say by how much);
* gradients XORed bitwise with the gradients of the most similar case packed before (the cases share the
  gradient noise of each step and move little, so most high bits cancel), stored as four byte planes so that
  xz finds the zero runs. The whole archive is one safetensors file compressed with xz.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save

HERE = Path(__file__).resolve().parent
OUT = HERE / "golden_data"
NAMES = ("linear.weight", "linear.bias", "conv.weight", "gain", "embed", "lora_down", "lora_up")
KEEP_META = ("type", "config", "n_steps", "shapes", "notes", "klass")


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


def grad_bits(gold: dict, n_steps: int) -> torch.Tensor:
    return torch.cat([gold[f"grad.{t}.{n}"].reshape(-1) for t in range(1, n_steps + 1) for n in NAMES]).view(torch.int32)


def planes(bits: torch.Tensor) -> torch.Tensor:
    return bits.view(torch.uint8).reshape(-1, 4).t().contiguous()


def xz_size(bits: torch.Tensor) -> int:
    return len(lzma.compress(planes(bits).numpy().tobytes(), preset=6))


def pack(src: Path) -> None:
    index = json.loads((src / "index.json").read_text())["cases"]
    cases = sorted(c for c, m in index.items() if m["dtype"] == "float32")
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, dict] = {}
    bits: dict[str, torch.Tensor] = {}
    init = None
    for case in cases:
        m = index[case]
        gold = load_file(str(src / m["file"]))
        if m["none_grads"]:
            raise SystemExit(f"{case}: steps without gradients are not supported by this format")
        this_init = {n: gold[f"init.{n}"] for n in NAMES}
        if init is None:
            init = this_init
            tensors.update({f"init.{n}": v for n, v in init.items()})
        elif any(not torch.equal(init[n], this_init[n]) for n in NAMES):
            raise SystemExit(f"{case}: initial parameters differ from the first case's; store them per case")
        g = grad_bits(gold, m["n_steps"])
        base = min(bits, key=lambda b: xz_size(g ^ bits[b]) if bits[b].shape == g.shape else 1 << 62, default=None)
        if base is not None and xz_size(g ^ bits[base]) >= xz_size(g):
            base = None
        bits[case] = g
        tensors[f"{case}/grads"] = planes(g ^ bits[base] if base else g)
        n = m["n_steps"]
        for key, v in gold.items():
            if key.startswith(("state.", "group.", "trace.")) or key.startswith(f"param.{n}."):
                tensors[f"{case}/{key}"] = v
        meta[case] = {**{k: m[k] for k in KEEP_META}, "grad_base": base,
                      "digests": [[digest(gold[f"param.{t}.{p}"]) for p in NAMES] for t in range(1, n + 1)]}
    OUT.mkdir(exist_ok=True)
    (OUT / "tensors.safetensors.xz").write_bytes(lzma.compress(save(tensors), preset=9 | lzma.PRESET_EXTREME))
    (OUT / "cases.json").write_text(json.dumps({"format": 1, "names": NAMES, "cases": meta}, indent=1,
                                               sort_keys=True) + "\n")
    verify(src, cases, index)


def verify(src: Path, cases: list[str], index: dict) -> None:
    sys.path.insert(0, str(HERE.parent.parent))
    from tests.optimizers import golden

    golden.archive.cache_clear()
    for case in cases:
        want = load_file(str(src / index[case]["file"]))
        meta, got = golden.load(case)
        for key, v in want.items():
            step = key.split(".")[1] if key.startswith("param.") else None
            if step is not None and int(step) != meta["n_steps"]:
                assert digest(v) == meta["digests"][int(step) - 1][NAMES.index(key.split(".", 2)[2])], key
            else:
                assert torch.equal(got[key], v) and got[key].dtype == v.dtype, (case, key)
    size = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{len(cases)} cases packed and checked, {size / 2**20:.2f} MiB in {OUT}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    pack(Path(sys.argv[1]))
