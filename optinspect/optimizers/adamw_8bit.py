"""AdamW8bitKahan (tdrussell's diffusion-pipe, trainer `optimizers/adamw_8bit.py`), re-implemented.

bitsandbytes' 8-bit AdamW (block-wise dynamic quantization, CPU kernel semantics) plus a Kahan
compensation buffer `shift`, in pure torch: no bitsandbytes at run time, same state layout (flat in
`optimizer.state`, nested under `__bnb_optimizer_quant_state__` in `state_dict()` as bitsandbytes >= 0.45
saves it; both layouts load).

Two bugs of the original are reproduced by default, each with one documented fix:
* weight decay is applied to the Kahan buffer (~0), not to the weights, so it has no effect;
  `decay_weights=True` decays the weights instead.
* `stabilize` (default True) derives an RMS from the raw `state2`, which holds uint8 codes on the 8-bit
  path; `fix_stabilize=True` uses the dequantized second moment instead.
"""

from __future__ import annotations

import math

import torch

from ._ahead import splits_alike_at
from ._base import PerParameterOptimizer, check_betas, check_range
from ._common import tensor_batches, windows
from ._quant import BLOCK as _BLOCK
from ._quant import dequantize_blockwise, dynamic_map, quantize_blockwise

__all__ = ["AdamW8bitKahan", "QUANT_STATE_KEY"]

QUANT_STATE_KEY = "__bnb_optimizer_quant_state__"
_QUANT_KEYS = ("state1", "state2", "qmap1", "qmap2", "absmax1", "absmax2", "max1", "max2", "new_max1",
               "new_max2", "gnorm_vec", "unorm_vec")


class AdamW8bitKahan(PerParameterOptimizer):
    """8-bit AdamW with Kahan-compensated parameter updates (see the module docstring for the quirks)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, optim_bits: int = 32, args=None,
                 min_8bit_size: int = 4096, is_paged: bool = False, stabilize: bool = True,
                 percentile_clipping: int = 100, block_wise: bool = True, fix_stabilize: bool = False,
                 decay_weights: bool = False):
        check_range("lr", lr, 0.0)
        check_betas(betas)
        check_range("eps", eps, 0.0)
        check_range("weight_decay", weight_decay, 0.0)
        if amsgrad:
            raise ValueError("amsgrad must be False: bitsandbytes' 8-bit AdamW does not support it")
        if optim_bits != 32:
            raise ValueError(f"optim_bits must be 32 (AdamW8bit picks 8-bit states by min_8bit_size), got {optim_bits}")
        if percentile_clipping != 100:
            raise ValueError("percentile_clipping must be 100 (adaptive clipping is not implemented)")
        if not block_wise:
            raise ValueError("block_wise must be True (only block-wise 8-bit states are implemented)")
        if not isinstance(min_8bit_size, int) or min_8bit_size < 0:
            raise ValueError(f"min_8bit_size must be an integer >= 0, got {min_8bit_size!r}")
        self.args = args
        self.is_paged = is_paged
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, alpha=0.0, t_alpha=None,
                        t_beta3=None, min_8bit_size=min_8bit_size, stabilize=stabilize,
                        fix_stabilize=fix_stabilize, decay_weights=decay_weights)
        super().__init__(params, defaults)

    # -- checkpoint layout ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        sd = super().state_dict()
        packed = {}
        for pid, live in sd["state"].items():
            st = dict(live)  # torch hands out the live per-parameter dicts: never mutate them
            nested = {k: st.pop(k) for k in _QUANT_KEYS if k in st}
            if nested:
                st[QUANT_STATE_KEY] = nested
            packed[pid] = st
        sd["state"] = packed
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        # torch casts floating state to the parameter dtype; bitsandbytes keeps its quant state as saved
        flat_state = {}
        kept = {}
        for pid, st in state_dict["state"].items():
            st = dict(st)
            nested = st.pop(QUANT_STATE_KEY, None) or {}
            quant = {**{k: st.pop(k) for k in _QUANT_KEYS if k in st}, **nested}
            kept[pid] = quant
            flat_state[pid] = st
        super().load_state_dict({"state": flat_state, "param_groups": state_dict["param_groups"]})
        params = [p for g in self.param_groups for p in g["params"]]
        saved_ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
        for pid, p in zip(saved_ids, params, strict=False):
            for k, v in kept.get(pid, {}).items():
                self.state[p][k] = v.to(p.device) if isinstance(v, torch.Tensor) else v

    # -- update -----------------------------------------------------------------------------------
    def _init_state(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        state["step"] = 0
        if p.numel() < group["min_8bit_size"]:
            state["state1"] = torch.zeros_like(p, dtype=torch.float32)
            state["state2"] = torch.zeros_like(p, dtype=torch.float32)
        else:
            state["state1"] = torch.zeros_like(p, dtype=torch.uint8)
            state["state2"] = torch.zeros_like(p, dtype=torch.uint8)
            state["qmap1"] = self._map(True, p.device)
            state["qmap2"] = self._map(False, p.device)
            n_blocks = math.ceil(p.numel() / _BLOCK)
            state["absmax1"] = torch.zeros(n_blocks, dtype=torch.float32, device=p.device)
            state["absmax2"] = torch.zeros(n_blocks, dtype=torch.float32, device=p.device)
        state["shift"] = torch.zeros_like(p)

    def _map(self, signed: bool, device: torch.device) -> torch.Tensor:
        """This optimizer's map for new 8-bit states on `device`: one tensor its parameters share, as
        bitsandbytes' optimizer shares its own (a saved state holds it once)."""
        maps = self.__dict__.setdefault("_maps", {})
        if (signed, device) not in maps:
            maps[(signed, device)] = dynamic_map(signed, device=device)
        return maps[(signed, device)]

    def _rounded(self, p: torch.Tensor, group: dict) -> bool:
        return False  # low-precision weights keep what does not fit in the Kahan buffer: nothing is drawn

    def _step_param(self, p: torch.Tensor, group: dict) -> None:
        if len(self.state[p]) == 0:
            self._init_state(p, group)
        self._update(p, group)

    def _stabilized_lr(self, grad: torch.Tensor, state: dict, group: dict) -> float:
        eps = group["eps"]
        if group["fix_stabilize"]:
            v = state["state2"]
            if v.dtype == torch.uint8:
                v = dequantize_blockwise(v, state["absmax2"], state["qmap2"])
            if state["step"] <= 1:
                return group["lr"]
            v = v / (1 - group["betas"][1] ** (state["step"] - 1))
            rms = (grad.float().pow(2) / v.clamp(min=eps**2)).mean().sqrt()
        else:  # the original: raw state2 (uint8 codes on the 8-bit path), eps^2 cast to its dtype
            s2 = state["state2"]
            rms = (grad.pow(2) / torch.max(s2, torch.tensor(eps**2, dtype=s2.dtype, device=s2.device))).mean().sqrt()
        return group["lr"] / max(1, rms.item())

    def _step_group(self, group: dict, params: list[torch.Tensor]) -> None:
        """Off CPU, runs of consecutive 8-bit parameters with the same step and learning rate are updated as one
        flat tensor (`_apply_flat`: one kernel per operation per run instead of per tensor); the rest, and every
        parameter on CPU, tensor by tensor. The same operations element by element and block by block either
        way: each run's tensors hold whole 256-element blocks, so no block straddles two of them."""
        for p in params:
            if len(self.state[p]) == 0:
                self._init_state(p, group)
        prepared = [(p, *self._prepare(p, group)) for p in params]  # each reads only its own state
        for batch in tensor_batches(params, working=torch.float32):
            if len(batch) == 1:  # every parameter on CPU
                self._apply_param(*prepared[batch[0]], group)
                continue
            for run in self._flat_runs([prepared[i] for i in batch]):
                if len(run) > 1:
                    self._apply_flat(run, group)
                else:
                    self._apply_param(*run[0], group)

    def _flat_runs(self, items: list[tuple]) -> list[list[tuple]]:
        """Consecutive (p, grad, lr) that may share one flat update: 8-bit states, whole blocks, contiguous, one
        step count, one learning rate; on CPU (tests) also whole vectors in every thread's share, at any count
        (see splits_alike_at), so every element meets the same vectorised code as tensor by tensor."""
        threads = torch.get_num_threads()

        def key(item: tuple) -> tuple | None:
            p, grad, lr = item
            st = self.state[p]
            if (st["state1"].dtype != torch.uint8 or p.numel() % _BLOCK or not p.is_contiguous()
                    or not all(st[k].is_contiguous() for k in ("state1", "state2", "shift"))
                    or p.device.type == "cpu" and not splits_alike_at(p.numel(), threads)):
                return None
            return st["step"], lr

        runs: list[list[tuple]] = []
        last = None
        for item in items:
            k = key(item)
            if k is not None and k == last:
                runs[-1].append(item)
            else:
                runs.append([item])
            last = k
        out = []
        for run in runs:  # on CPU the run as a whole must split alike too; its maps must hold the same values
            total = sum(p.numel() for p, _, _ in run)
            if len(run) > 1 and (run[0][0].device.type == "cpu" and not splits_alike_at(total, threads)
                                 or not self._same_maps(run)):
                out += [[item] for item in run]
            else:
                out.append(run)
        return out

    def _same_maps(self, run: list[tuple]) -> bool:
        states = [self.state[p] for p, _, _ in run]
        for k in ("qmap1", "qmap2"):
            if all(st[k] is states[0][k] for st in states):  # this optimizer's shared map: no comparison
                continue
            maps = torch.stack([st[k] for st in states])
            if not torch.equal(maps, maps[:1].expand_as(maps)):  # one comparison (one sync) per run
                return False
        return True

    def _apply_flat(self, run: list[tuple], group: dict) -> None:
        """One update over the run's tensors laid end to end: gathered, updated by `_apply` (the per-tensor
        code), and copied back."""
        first = self.state[run[0][0]]
        ps = [p for p, _, _ in run]
        states = [self.state[p] for p in ps]
        flat = {k: torch.cat([st[k].reshape(-1) for st in states]) for k in ("state1", "state2", "absmax1", "absmax2",
                                                                             "shift")}
        p_flat = torch.cat([p.reshape(-1) for p in ps])
        g_flat = torch.cat([g.reshape(-1) for _, g, _ in run])
        self._apply(p_flat, g_flat, flat, first, group, run[0][2])
        sizes = [p.numel() for p in ps]
        torch._foreach_copy_([p.view(-1) for p in ps], list(p_flat.split(sizes)))
        for k, per in (("state1", sizes), ("state2", sizes), ("shift", sizes),
                       ("absmax1", [st["absmax1"].numel() for st in states]),
                       ("absmax2", [st["absmax2"].numel() for st in states])):
            torch._foreach_copy_([st[k].view(-1) for st in states], list(flat[k].split(per)))

    def _prepare(self, p: torch.Tensor, group: dict) -> tuple[torch.Tensor, float]:
        """The step count advanced, and (grad, learning rate) for this step (stabilize scales it per tensor)."""
        state = self.state[p]
        grad = p.grad.contiguous()
        state["step"] += 1
        return grad, self._stabilized_lr(grad, state, group) if group["stabilize"] else group["lr"]

    def _update(self, p: torch.Tensor, group: dict) -> None:
        self._apply_param(p, *self._prepare(p, group), group)

    def _apply_param(self, p: torch.Tensor, grad: torch.Tensor, lr: float, group: dict) -> None:
        state = self.state[p]
        keys = ("state1", "state2", "absmax1", "absmax2", "shift")
        # Everything below is elementwise or per 256-element block: on CPU it runs in block-aligned slices
        # that stay in cache (same operations per element and per block, same bits; see slice_length).
        sliced = [p, grad, state["state1"], state["state2"], state["shift"]]
        parts = windows(sliced, _BLOCK) if state["state1"].dtype == torch.uint8 else []
        if len(parts) <= 1:
            self._apply(p, grad, {k: state[k] for k in keys if k in state}, state, group, lr)
            return
        for lo, (p_part, g_part, codes1, codes2, shift) in parts:
            blocks = slice(lo // _BLOCK, -(-(lo + p_part.numel()) // _BLOCK))
            views = {"state1": codes1, "state2": codes2, "shift": shift,
                     "absmax1": state["absmax1"][blocks], "absmax2": state["absmax2"][blocks]}
            self._apply(p_part, g_part, views, state, group, lr)

    @staticmethod
    def _apply(p: torch.Tensor, grad: torch.Tensor, views: dict, state: dict, group: dict, lr: float) -> None:
        """The update of p (a whole parameter or a block-aligned slice) with the matching views of its state."""
        step = state["step"]
        beta1, beta2 = group["betas"]
        eps, wd = group["eps"], group["weight_decay"]
        shift = views["shift"]
        g = grad.float()
        correction1 = 1.0 - beta1**step
        correction2 = math.sqrt(1.0 - beta2**step)
        eight_bit = views["state1"].dtype == torch.uint8
        if eight_bit:
            m = dequantize_blockwise(views["state1"], views["absmax1"], state["qmap1"], _BLOCK)
            v = dequantize_blockwise(views["state2"], views["absmax2"], state["qmap2"], _BLOCK)
        else:
            m, v = views["state1"], views["state2"]
        m.mul_(beta1).add_(g, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        shift32 = shift.float()
        if wd > 0.0:  # bitsandbytes decays the tensor it updates: the Kahan buffer, unless decay_weights
            if group["decay_weights"]:
                p.mul_(1.0 - lr * wd)
            else:
                shift32.mul_(1.0 - lr * wd)
        if eight_bit:  # bitsandbytes' two CPU kernels group the same update differently: keep each one's
            shift32.addcdiv_(m, (v.sqrt() / correction2).add_(eps), value=-lr / correction1)
        else:
            shift32.add_(m / (v.sqrt() + eps * correction2), alpha=(-lr * correction2 / correction1) * 1.0)
        shift.copy_(shift32)
        if eight_bit:
            quantize_blockwise(m, state["qmap1"], _BLOCK, out=views["state1"], absmax=views["absmax1"])
            quantize_blockwise(v, state["qmap2"], _BLOCK, out=views["state2"], absmax=views["absmax2"])
        # Kahan: add the buffer to the weights; keep what did not fit into their precision
        before = p.clone()
        p.add_(shift)
        shift.add_(before.sub_(p))
