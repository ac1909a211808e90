"""Interaction rules: what a schema cannot express. One small function per rule, registered by code.

Each function takes a RuleContext and yields Findings. Rules never import torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from optinspect import specs
from optinspect.config.context import RuleContext, show
from optinspect.config.registry import Finding, register
from optinspect.diagnostics import Severity

LOW_PRECISION = {"bfloat16", "float16"}
SR_TYPES = specs.with_feature("stochastic_rounding")
RESET_TYPES = specs.with_feature("resets")


def _truthy(v: object) -> bool:
    """A flag as the code that reads it sees it: the trainer (gradient_release) and the constructors test flags
    with `if`, so 1 is on and so is the string 'false' (OPT104 says so)."""
    return bool(v)


def reset_steps(interval: int, increment: int, *, exact: bool, horizon: int, limit: int = 6) -> list[int]:
    """Steps on which the optimizer resets its state. After the first reset the originals come one step early:
    the reset step itself counts as step 1 of the next period. `exact` (optinspect's exact_reset_period) gives
    the documented schedule."""
    steps: list[int] = []
    n, s = 0, 0
    while len(steps) < limit:
        period = interval + n * increment
        if period <= 0:
            break
        s = period if n == 0 else s + period - (0 if exact else 1)
        if s > horizon:
            break
        steps.append(s)
        n += 1
    return steps


# -- Adafactor ---------------------------------------------------------------------------------------
@register("OPT201", "adafactor-lr-with-relative-step", "error", "rule",
          "Adafactor: `lr` is set while `relative_step` is true (its default).",
          why="transformers raises 'Cannot combine manual `lr` and `relative_step=True`'; the default of "
              "relative_step is true, so a table with only `lr` fails.",
          bad="[optimizer]\ntype='adafactor'\nlr=1e-4\nscale_parameter=false",
          good="[optimizer]\ntype='adafactor'\nlr=1e-4\nscale_parameter=false\nrelative_step=false",
          fix="add `relative_step = false` and "
          "`scale_parameter = false`", types=("adafactor",))
def adafactor_lr_with_relative_step(ctx: RuleContext) -> Iterator[Finding]:
    if ctx.get("lr") is not None and _truthy(ctx.get("relative_step")):
        written = "is true" if ctx.has("relative_step") else "defaults to true"
        yield Finding(("lr",), f"`lr` is set but `relative_step` {written}: the constructor raises ValueError",
                      "add `relative_step = false` (and `scale_parameter = false`)")


@register("OPT202", "adafactor-relative-step-in-trainer", "error", "rule",
          "Adafactor with `relative_step = true`: the trainer's LR scheduler cannot handle lr = None.",
          why="train.py always wraps the optimizer in ConstantLR/LinearLR, which multiply group['lr']; with "
              "relative_step the lr is None and the scheduler raises TypeError at start-up.",
          bad="[optimizer]\ntype='adafactor'\nscale_parameter=false",
          good="[optimizer]\ntype='adafactor'\nscale_parameter=false\nrelative_step=false\nlr=1e-4",
          fix="set `relative_step = false` and give `lr`", types=("adafactor",), trainer_only=True)
def adafactor_relative_step(ctx: RuleContext) -> Iterator[Finding]:
    if _truthy(ctx.get("relative_step")) and ctx.get("lr") is None:
        key = ("relative_step",) if ctx.has("relative_step") else ("type",)
        yield Finding(key, "`relative_step` is true (the default when omitted): the group lr is None and the "
                      "trainer's ConstantLR/LinearLR scheduler raises TypeError before the first step",
                      "set `relative_step = false`, `scale_parameter = false` and `lr = 1e-4`")


@register("OPT203", "adafactor-missing-lr", "error", "rule",
          "Adafactor: `relative_step = false` without `lr`.",
          why="With relative_step off the group's lr stays None: the trainer's LR scheduler multiplies it at start-up "
              "(TypeError before the first step); without a scheduler Adafactor's own first step fails the same way.",
          bad="[optimizer]\ntype='adafactor'\nrelative_step=false\nscale_parameter=false",
          good="[optimizer]\ntype='adafactor'\nrelative_step=false\nscale_parameter=false\nlr=1e-4",
          fix="add `lr = 1e-4`",
          types=("adafactor",))
def adafactor_missing_lr(ctx: RuleContext) -> Iterator[Finding]:
    if ctx.has("relative_step") and not _truthy(ctx.get("relative_step")) and ctx.get("lr") is None:
        yield Finding(("relative_step",), "`relative_step = false` but no `lr`: the lr is None, and the trainer's "
                      "LR scheduler raises TypeError on it at start-up, before the first step", "add `lr = 1e-4`")


@register("OPT204", "adafactor-warmup-init-without-relative-step", "error", "rule",
          "Adafactor: `warmup_init = true` requires `relative_step = true`.",
          why="transformers raises ValueError; other trainers silently flip relative_step on.",
          bad="[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false\nwarmup_init=true",
          good="[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false",
          fix="remove `warmup_init`",
          types=("adafactor",))
def adafactor_warmup_init(ctx: RuleContext) -> Iterator[Finding]:
    if _truthy(ctx.get("warmup_init")) and ctx.get("relative_step") is False:
        yield Finding(("warmup_init",), "`warmup_init = true` needs `relative_step = true`: the constructor "
                      "raises ValueError", "remove `warmup_init` (it only applies to the relative step)")


@register("OPT205", "adafactor-scale-parameter-with-lr", "warning", "rule",
          "Adafactor: `scale_parameter` (default true) with an explicit `lr`.",
          why="The step becomes lr x max(eps2, RMS(p)): a zero-initialised LoRA-up matrix trains at lr x 1e-3 "
              "and every tensor gets a different effective lr.",
          bad="[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4",
          good="[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false",
          fix="add `scale_parameter = false`", types=("adafactor",))
def adafactor_scale_parameter(ctx: RuleContext) -> Iterator[Finding]:
    if ctx.get("lr") is not None and _truthy(ctx.get("scale_parameter")):
        key = ("scale_parameter",) if ctx.has("scale_parameter") else ("lr",)
        written = "is true" if ctx.has("scale_parameter") else "defaults to true"
        yield Finding(key, f"`scale_parameter` {written} with an explicit `lr = {show('lr', ctx.get('lr'))}`: "
                      "the step is lr x RMS(p), so zero-initialised LoRA weights move 1000x slower",
                      "add `scale_parameter = false`")


@register("OPT206", "adafactor-beta1-zero", "info", "rule",
          "Adafactor `beta1 = 0`: a full-size first moment that gives no momentum.",
          why="Momentum is on whenever beta1 is not None; 0 allocates exp_avg and keeps it equal to the update.",
          bad="[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false\nbeta1=0",
          good="[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false\nbeta1=0.9",
          fix="omit `beta1` to disable momentum (TOML cannot write None)",
          types=("adafactor",))
def adafactor_beta1_zero(ctx: RuleContext) -> Iterator[Finding]:
    if ctx.has("beta1") and ctx.num("beta1") == 0:
        yield Finding(("beta1",), "`beta1 = 0` does not disable momentum: it allocates a full-size `exp_avg` "
                      "that equals the update", "omit the `beta1` key to disable momentum and save the memory",
                      on_value=True)


@register("OPT207", "adafactor-decay-rate-sign", "error", "rule",
          "Adafactor `decay_rate` must be negative (-0.8 typical).",
          why="beta2_t = 1 - t^decay_rate: 0 disables averaging and a positive value gives negative EMA weights "
              "and NaN weights within a few steps.",
          bad="[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false\ndecay_rate=0.8",
          good="[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false\n"
               "decay_rate=-0.8",
          fix="use `decay_rate = -0.8`",
          types=("adafactor",))
def adafactor_decay_rate(ctx: RuleContext) -> Iterator[Finding]:
    v = ctx.num("decay_rate")
    # 0 runs (every step's g^2 replaces the average); positive goes NaN: measured at step 6 for 1e-3, step 2 from
    # 1e-2, not within 200 steps for 1e-8
    if v is not None and v >= 0:
        yield Finding(("decay_rate",), f"`decay_rate = {v:g}` should be negative: beta2_t = 1 - t^decay_rate "
                      + ("is 0, so the second moment is just the last g^2 (no averaging)" if v == 0
                         else "goes negative and the moments turn NaN within a few steps" if v >= 1e-2
                         else "dips below 0, slowly: the moments may turn NaN later in the run"),
                      "use `decay_rate = -0.8`", severity=Severity.WARNING if v < 1e-2 else None, on_value=True)


@register("OPT208", "adafactor-eps-scalar", "error", "rule",
          "Adafactor/Automagic `eps` written as one number instead of `[eps1, eps2]`.",
          why="The optimizer indexes eps[0] and eps[1]: 'float object is not subscriptable' at step 1.",
          bad="[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false\neps=1e-30",
          good="[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false\neps=[1e-30, 1e-3]",
          fix="write `eps = [1e-30, 1e-3]`", types=("adafactor", "automagic"))
def adafactor_eps_scalar(ctx: RuleContext) -> Iterator[Finding]:
    v = ctx.get("eps")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        yield Finding(("eps",), f"`eps = {show('eps', v)}` is one number, but this optimizer indexes eps[0] and "
                      "eps[1] (TypeError at step 1)", f"write `eps = [{v:g}, 1e-3]`", on_value=True)


@register("OPT209", "double-clipping", "info", "rule",
          "Adafactor `clip_threshold` and the trainer's `gradient_clipping` both clip.",
          why="DeepSpeed clips gradients to global norm `gradient_clipping` (1.0 when the key is absent) before "
              "Adafactor clips its update RMS: two mechanisms that interact.",
          bad="gradient_clipping=1.0\n[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\n"
              "scale_parameter=false",
          good="gradient_clipping=0.0\n[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\n"
               "scale_parameter=false",
          fix="set top-level `gradient_clipping = 0.0` to rely on Adafactor's clip_threshold",
          types=("adafactor", "automagic"))
def double_clipping(ctx: RuleContext) -> Iterator[Finding]:
    gc = ctx.top("gradient_clipping", 1.0)
    ct = ctx.num("clip_threshold")
    explicit = "gradient_clipping" in ctx.config or ctx.has("clip_threshold")
    if explicit and isinstance(gc, (int, float)) and gc > 0 and ct is not None and ct > 0:
        src = f"`gradient_clipping = {gc:g}`" if "gradient_clipping" in ctx.config else \
            "DeepSpeed's default gradient_clipping of 1.0 (the key is absent)"
        key = ("gradient_clipping",) if "gradient_clipping" in ctx.config else ("clip_threshold",)
        yield Finding(key, f"{src} clips gradients and `clip_threshold = {ct:g}` clips the update as well",
                      "set top-level `gradient_clipping = 0.0` to keep only Adafactor's clipping",
                      absolute="gradient_clipping" in ctx.config)


@register("OPT210", "clip-threshold-nonpositive", "warning", "rule",
          "`clip_threshold <= 0`: 0 makes every update zero, negative disables clipping.",
          bad="[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false\nclip_threshold=0",
          good="[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false\nclip_threshold=1",
          fix="use `clip_threshold = 1.0`", types=("adafactor", "automagic"))
def clip_threshold_nonpositive(ctx: RuleContext) -> Iterator[Finding]:
    v = ctx.num("clip_threshold")
    if v is not None and v <= 0:
        what = ("every update becomes 0, so nothing trains, and a tensor whose gradient is all zero (LoRA A on step "
                "1) turns NaN (0/0)") if v == 0 else "update clipping is disabled"
        yield Finding(("clip_threshold",), f"`clip_threshold = {v:g}`: {what}", "use `clip_threshold = 1.0`",
                      severity=Severity.ERROR if v == 0 else None, on_value=True)


@register("OPT211", "adafactor-bf16-reload", "info", "rule",
          "Adafactor on bf16 weights: moments come back bf16 after a resume.",
          why="torch's load_state_dict casts floating state to the parameter dtype, so the fp32 moments of bf16 "
              "weights lose precision on every resume (the next step casts them back up).",
          bad="[model]\ndtype='bfloat16'\n[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\n"
              "scale_parameter=false",
          good="[model]\ndtype='bfloat16'\n[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\n"
               "scale_parameter=false\nfp32_state_on_load=true",
          fix="set `fp32_state_on_load = true` with optinspect's EnhancedAdafactor", types=("adafactor",))
def adafactor_bf16_reload(ctx: RuleContext) -> Iterator[Finding]:
    if ctx.trained_dtype == "bfloat16" and not _truthy(ctx.get("fp32_state_on_load")):
        yield Finding(("type",), "bf16 weights: a resumed run reloads Adafactor's fp32 moments as bf16",
                      "set `fp32_state_on_load = true` (optinspect's EnhancedAdafactor) to keep them fp32")


# -- Prodigy -----------------------------------------------------------------------------------------
@register("OPT301", "prodigy-lr-not-one", "warning", "rule",
          "Prodigy `lr` far from 1.0.",
          why="Prodigy estimates the step size d itself; lr multiplies it. lr = 1e-4 (an Adam habit) stalls "
              "training (the golden problem moves 1e5x less).", bad="[optimizer]\ntype='Prodigy'\nlr=1e-4",
          good="[optimizer]\ntype='Prodigy'\nlr=1.0",
          fix="use `lr = 1.0` and scale with `d_coef`", types=("prodigy",))
def prodigy_lr(ctx: RuleContext) -> Iterator[Finding]:
    lr = ctx.num("lr")
    if lr is not None and ctx.has("lr") and not (0.5 <= lr <= 2.0):
        yield Finding(("lr",), f"Prodigy `lr = {lr:g}` multiplies the estimated step size d"
                      + ("; this small a value stalls training" if lr <= 0.1 else ""),
                      "use `lr = 1.0`; scale with `d_coef` if needed", on_value=True)  # stalls, never crashes


@register("OPT302", "prodigy-warmup-without-safeguard", "warning", "rule",
          "Prodigy with LR warm-up but without `safeguard_warmup = true`.",
          why="During warm-up the small lr makes d overestimate; the authors recommend safeguard_warmup.",
          bad="warmup_steps=100\n[optimizer]\ntype='Prodigy'",
          good="warmup_steps=100\n[optimizer]\ntype='Prodigy'\nsafeguard_warmup=true",
          fix="add `safeguard_warmup = true`",
          types=("prodigy",))
def prodigy_warmup(ctx: RuleContext) -> Iterator[Finding]:
    ws = ctx.top("warmup_steps", 0)
    if isinstance(ws, (int, float)) and ws > 0 and not _truthy(ctx.get("safeguard_warmup")):
        yield Finding(("type",), f"`warmup_steps = {ws}` with Prodigy but `safeguard_warmup` is false: d "
                      "overestimates during warm-up", "add `safeguard_warmup = true`")


@register("OPT303", "prodigy-konstmish-spelling", "error", "rule",
          "Prodigy keys in the original prodigyopt spelling, which pytorch_optimizer silently ignores.",
          why="`use_bias_correction` and `decouple` are prodigyopt names; pytorch_optimizer spells them "
              "`bias_correction` and `weight_decouple` and drops unknown keys, so the setting never applies.",
          bad="[optimizer]\ntype='Prodigy'\nuse_bias_correction=true",
          good="[optimizer]\ntype='Prodigy'\nbias_correction=true", fix="use `bias_correction = true`",
          types=("prodigy",))
def prodigy_spelling(ctx: RuleContext) -> Iterator[Finding]:
    for k in ("use_bias_correction", "decouple"):  # prodigyopt's names for pytorch_optimizer's keys
        right = specs.TYPES["prodigy"].misspellings[k]
        if ctx.has(k):
            yield Finding((k,), f"`{k}` is prodigyopt's spelling; pytorch_optimizer.Prodigy ignores it silently",
                          f"rename it to `{right}`")


@register("OPT304", "prodigy-coupled-decay-noop", "warning", "rule",
          "Prodigy `weight_decouple = false`: coupled weight decay has no effect in pytorch_optimizer.",
          why="The decay is added to the gradient after the moments were computed (measured: identical to "
              "weight_decay = 0).", bad="[optimizer]\ntype='Prodigy'\nweight_decay=0.05\nweight_decouple=false",
          good="[optimizer]\ntype='Prodigy'\nweight_decay=0.05",
          fix="keep `weight_decouple = true`", types=("prodigy",))
def prodigy_coupled(ctx: RuleContext) -> Iterator[Finding]:
    if ctx.get("weight_decouple") is False and (ctx.num("weight_decay") or 0) > 0:
        yield Finding(("weight_decouple",), "`weight_decouple = false`: pytorch_optimizer's coupled weight decay "
                      "is applied after the moments and has no effect", "remove `weight_decouple`")


@register("OPT305", "prodigy-gradient-release", "warning", "rule",
          "Prodigy with `gradient_release = true`: d is estimated per tensor.",
          why="Gradient release builds one optimizer per parameter, so each tensor gets its own d (measured: "
              "1e-6 to 5.6e-3 instead of one global value).", bad="[optimizer]\ntype='Prodigy'\ngradient_release=true",
          good="[optimizer]\ntype='Prodigy'",
          fix="turn gradient_release off for Prodigy", types=("prodigy",))
def prodigy_gradient_release(ctx: RuleContext) -> Iterator[Finding]:
    if _truthy(ctx.get("gradient_release")):
        yield Finding(("gradient_release",), "gradient release builds one Prodigy per tensor: d becomes a "
                      "per-tensor estimate, not the global one", "remove `gradient_release`")


@register("OPT306", "prodigy-diffusion-defaults", "info", "rule",
          "Prodigy's maintainers recommend `safeguard_warmup = true` and `bias_correction = true` for diffusion.",
          why="konstmish/prodigy README: diffusion models train better with both on, weight_decay ~0.01.",
          bad="[optimizer]\ntype='Prodigy'",
          good="[optimizer]\ntype='Prodigy'\nsafeguard_warmup=true\nbias_correction=true",
          fix="add `safeguard_warmup = true` and `bias_correction = true`",
          types=("prodigy",))
def prodigy_defaults(ctx: RuleContext) -> Iterator[Finding]:
    missing = [k for k in ("safeguard_warmup", "bias_correction") if not _truthy(ctx.get(k))]
    if missing:
        wanted = " and ".join(f"`{k} = true`" for k in missing)
        yield Finding(("type",), f"for diffusion models Prodigy's authors recommend {wanted}",
                      "add them unless you have measured otherwise")


# -- precision ---------------------------------------------------------------------------------------
@register("OPT401", "adamw-on-bf16", "warning", "rule",
          "`type = 'adamw'` (no stochastic rounding or Kahan summation) on bf16 weights.",
          why="Updates below bf16 resolution, weight decay first, are rounded away.",
          bad="[adapter]\ndtype='bfloat16'\n[optimizer]\ntype='adamw'",
          good="[adapter]\ndtype='float32'\n[optimizer]\ntype='adamw'",
          fix="use `type = 'adamw_optimi'` (Kahan summation)", types=("adamw", "sgd", "offload"))
def adamw_on_bf16(ctx: RuleContext) -> Iterator[Finding]:
    if ctx.trained_dtype in LOW_PRECISION:
        yield Finding(("type",), f"`{ctx.type_name}` updates {ctx.trained_dtype} weights with plain "
                      "round-to-nearest: small updates are lost", "use `type = 'adamw_optimi'`")


@register("OPT412", "prodigy-on-bf16", "warning", "rule",
          "Prodigy fine-tuning a bf16 model (no adapter): pytorch_optimizer's class computes in bf16, with no "
          "stochastic rounding.",
          why="With d0 = 1e-6 its first updates are about 1e-6, far below bf16's resolution at weights of 1e-2: "
              "they round away, the weights do not move, and d, estimated from how far they moved, stays at d0 "
              "(dry-run, 30 steps: d 1.05e-6 and the loss flat; fp32 arithmetic: d 5.2e-3, loss / 10). A LoRA "
              "is spared: its zero-initialised B matrices move, and d grows.",
          bad="[model]\ndtype='bfloat16'\n[optimizer]\ntype='Prodigy'",
          good="[model]\ndtype='bfloat16'\n[adapter]\ntype='lora'\ndtype='bfloat16'\n[optimizer]\ntype='Prodigy'",
          fix="train float32 weights, or use an optimizer with stochastic rounding", types=("prodigy",))
def prodigy_on_bf16(ctx: RuleContext) -> Iterator[Finding]:
    if ctx.trained_dtype in LOW_PRECISION and not isinstance(ctx.top("adapter"), dict):
        yield Finding(("type",), f"Prodigy computes in {ctx.trained_dtype} on {ctx.trained_dtype} model weights: "
                      "its first updates (d0 = 1e-6) round away, so the weights do not move and d stays at d0",
                      "train float32 weights, or an optimizer with stochastic rounding; `optinspect dry-run "
                      "--compare-fp32` measures it on this config")


@register("OPT402", "stochastic-rounding-on-fp32", "info", "rule",
          "`stochastic_fp = true` while the trained weights are fp32: it does nothing.",
          bad="[model]\ndtype='float32'\n[optimizer]\ntype='scorn'\nstochastic_fp=true",
          good="[model]\ndtype='bfloat16'\n[optimizer]\ntype='scorn'\nstochastic_fp=true",
          fix="remove `stochastic_fp`", types=SR_TYPES)
def sr_on_fp32(ctx: RuleContext) -> Iterator[Finding]:
    if ctx.has("stochastic_fp") and _truthy(ctx.get("stochastic_fp")) and ctx.trained_dtype == "float32":
        yield Finding(("stochastic_fp",), "`stochastic_fp = true` has no effect on float32 weights",
                      "remove it, or train in bfloat16")


@register("OPT403", "adamw8bitkahan-stabilize", "warning", "rule",
          "AdamW8bitKahan `stabilize` (class default true) misbehaves.",
          why="It divides by the previous raw second moment: the first step is skipped, and on the 8-bit path "
              "it divides gradients by uint8 code indices. The README's example sets it false.",
          bad="[optimizer]\ntype='AdamW8bitKahan'\nweight_decay=0",
          good="[optimizer]\ntype='AdamW8bitKahan'\nweight_decay=0\nstabilize=false",
          fix="set `stabilize = false` (or, with optinspect's optimizer, "
          "`fix_stabilize = true`)", types=("adamw8bitkahan",))
def adamw8bit_stabilize(ctx: RuleContext) -> Iterator[Finding]:
    if _truthy(ctx.get("stabilize")) and not _truthy(ctx.get("fix_stabilize")):
        key = ("stabilize",) if ctx.has("stabilize") else ("type",)
        written = "is true" if ctx.has("stabilize") else "defaults to true"
        yield Finding(key, f"`stabilize` {written}: the first step is skipped and on 8-bit tensors the "
                      "gradient is divided by uint8 codes", "set `stabilize = false`, or `fix_stabilize = true` "
                      "with optinspect's AdamW8bitKahan")


@register("OPT404", "adamw8bitkahan-weight-decay-noop", "warning", "rule",
          "AdamW8bitKahan `weight_decay` has no effect (it decays the Kahan buffer, not the weights).",
          why="bitsandbytes applies decoupled decay to the tensor it updates, which is the ~0 Kahan buffer: "
              "weight_decay 1.0 vs 0.0 changed weights by 6e-8 in 25 steps.",
          bad="[optimizer]\ntype='AdamW8bitKahan'\nstabilize=false\nweight_decay=0.01",
          good="[optimizer]\ntype='AdamW8bitKahan'\nstabilize=false\nweight_decay=0",
          fix="accept no decay, or set `decay_weights = true` with optinspect's AdamW8bitKahan",
          types=("adamw8bitkahan",))
def adamw8bit_wd(ctx: RuleContext) -> Iterator[Finding]:
    wd = ctx.num("weight_decay") or 0
    if wd > 0 and not _truthy(ctx.get("decay_weights")):
        key = ("weight_decay",) if ctx.has("weight_decay") else ("type",)
        yield Finding(key, f"`weight_decay = {wd:g}` is applied to the Kahan buffer, not the weights: it does "
                      "nothing", "set `decay_weights = true` (optinspect's AdamW8bitKahan) or remove it")


BNB_REMOVED = (0, 50)  # bitsandbytes 0.50 removed block_wise and percentile_clipping from its 8-bit optimizers


def _bnb(ctx: RuleContext) -> tuple[tuple[int, ...] | None, str]:
    from optinspect.config.environment import show

    v = ctx.version("bitsandbytes")
    return v, (f"bitsandbytes {show(v)}, installed here" if v else "bitsandbytes is not installed here, so the "
               "trainer's version is unknown")


@register("OPT405", "bitsandbytes-removed-kwargs", "error", "rule",
          "`percentile_clipping`/`block_wise` on an 8-bit optimizer: bitsandbytes 0.50 removed them (TypeError).",
          why="bitsandbytes 0.46-0.49 accept both; 0.50 and later reject them before training. The grade follows "
              "the installed bitsandbytes (package metadata, never imported): an error from 0.50, nothing before, "
              "a warning naming both when it is not installed.",
          bad="[optimizer]\ntype='adamw8bit'\npercentile_clipping=100", good="[optimizer]\ntype='adamw8bit'",
          options={"versions": {"bitsandbytes": "0.50.2"}}, fix="remove the key",
          types=("adamw8bit", "adamw8bitkahan"))
def bnb_removed(ctx: RuleContext) -> Iterator[Finding]:
    version, said = _bnb(ctx)
    if version is not None and version < BNB_REMOVED:
        return
    for k in ("percentile_clipping", "block_wise"):
        if ctx.has(k):
            if version is None:
                yield Finding((k,), f"`{k}` is accepted by bitsandbytes 0.46-0.49 but a TypeError from 0.50 ({said})",
                              "remove it unless the trainer pins bitsandbytes < 0.50", severity=Severity.WARNING)
            else:
                yield Finding((k,), f"`{k}` is not a constructor argument of bitsandbytes >= 0.50 ({said}): "
                              "TypeError before training", "remove it")


@register("OPT409", "adamw8bitkahan-bitsandbytes", "error", "rule",
          "AdamW8bitKahan with bitsandbytes >= 0.50: the trainer's class fails at step 1 whatever the table says.",
          why="The trainer's AdamW8bitKahan reads `percentile_clipping` from bitsandbytes' per-parameter config, "
              "which 0.50 removed: KeyError on the first step. optinspect's bundled AdamW8bitKahan (its optimizers/ "
              "folder dropped into the trainer) does not use bitsandbytes. Graded by the installed bitsandbytes: an "
              "error from 0.50, info when it is not installed.",
          bad="[optimizer]\ntype='AdamW8bitKahan'\nlr=1e-4\nstabilize=false",
          good="[optimizer]\ntype='adamw'\nlr=1e-4", options={"versions": {"bitsandbytes": "0.50.2"}},
          fix="pin bitsandbytes < 0.50 for the trainer, or use optinspect's optimizers/ folder",
          types=("adamw8bitkahan",), trainer_only=True, trainer_class=True)
def adamw8bitkahan_bnb(ctx: RuleContext) -> Iterator[Finding]:
    version, said = _bnb(ctx)
    if version is not None and version < BNB_REMOVED:
        return
    what = ("the trainer's AdamW8bitKahan reads `percentile_clipping` from bitsandbytes' config, which 0.50 removed: "
            "KeyError at step 1")
    if version is None:
        yield Finding(("type",), f"with bitsandbytes >= 0.50 {what} ({said})",
                      "make sure the trainer has bitsandbytes < 0.50, or uses optinspect's optimizers/ folder",
                      severity=Severity.INFO, on_value=True)
    else:
        yield Finding(("type",), f"{what} ({said})",
                      "pin bitsandbytes < 0.50 for the trainer, or drop optinspect's optimizers/ folder into it "
                      "(then ignore this code)", on_value=True)


@register("OPT406", "low-precision-math", "warning", "rule",
          "SCORN/REMASTER `stochastic_fp = false` on bf16/fp16 weights: the whole update is computed in bf16.",
          why="Without stochastic_fp the working copies keep the weights' precision.",
          bad="[adapter]\ndtype='bfloat16'\n[optimizer]\ntype='scorn'\nstochastic_fp=false",
          good="[adapter]\ndtype='bfloat16'\n[optimizer]\ntype='scorn'",
          fix="keep `stochastic_fp = true`", types=("scorn", "remaster"))
def low_precision_math(ctx: RuleContext) -> Iterator[Finding]:
    if ctx.get("stochastic_fp") is False and ctx.trained_dtype in LOW_PRECISION:
        yield Finding(("stochastic_fp",), f"`stochastic_fp = false` on {ctx.trained_dtype} weights: moments and "
                      "update are computed in low precision", "remove `stochastic_fp = false`")


@register("OPT407", "fp16-rounds-to-bf16", "warning", "rule",
          "SCORN/REMASTER/Persona stochastic rounding on fp16 weights keeps only bf16 precision.",
          why="The originals truncate to 16 high bits of fp32 (the bf16 grid) before copying into fp16.",
          bad="[adapter]\ndtype='float16'\n[optimizer]\ntype='persona'",
          good="[adapter]\ndtype='bfloat16'\n[optimizer]\ntype='persona'",
          fix="train in bfloat16, or set `fp16_rounding = true` with optinspect's optimizers", types=SR_TYPES)
def fp16_rounding(ctx: RuleContext) -> Iterator[Finding]:
    if ctx.trained_dtype == "float16" and _truthy(ctx.get("stochastic_fp")) and not _truthy(ctx.get("fp16_rounding")):
        yield Finding(("type",), "float16 weights with stochastic_fp: the original rounds them to bf16 precision "
                      "(7 mantissa bits instead of 10)", "train in bfloat16, or `fp16_rounding = true`")


@register("OPT408", "zero-eps-nan", "warning", "rule",
          "A zero epsilon: a tensor whose gradient is all zero (a LoRA A matrix on step 1) turns NaN.",
          why="The step divides the first moment by sqrt(second moment) + eps (Adafactor: rsqrt of its factors "
              "+ eps[0]; Persona's focus: by its gradient variance + focus_eps). A tensor whose gradient is exactly "
              "zero has both moments 0, so with eps = 0 the update is 0/0 = NaN and the weights are NaN from then "
              "on, without an error. LoRA's A matrices get exactly zero gradients on the first step (B starts at 0).",
          bad="[optimizer]\ntype='adamw'\nlr=1e-4\neps=0",
          good="[optimizer]\ntype='adamw'\nlr=1e-4\neps=1e-8",
          fix="keep the default eps (1e-8; Adafactor [1e-30, 1e-3])",
          types=("adamw", "adamw8bit", "adamw8bitkahan", "prodigy", "adafactor", "persona"))
def zero_eps_nan(ctx: RuleContext) -> Iterator[Finding]:
    eps = ctx.get("eps")
    if ctx.schema == "adafactor":
        if isinstance(eps, list) and eps and _number(eps[0]) == 0:
            yield Finding(("eps",), "`eps[0] = 0`: a tensor whose gradient is all zero (LoRA A on step 1) gets NaN "
                          "weights (rsqrt of a zero second moment)", "use `eps = [1e-30, 1e-3]`", on_value=True)
        return
    if ctx.schema == "persona":
        if _number(ctx.get("focus_eps")) == 0 and (_number(ctx.get("focus_boost")) or 0) > 0:
            yield Finding(("focus_eps",), "`focus_eps = 0` with `focus_boost` > 0: a tensor whose gradient is all zero "
                          "(LoRA A on step 1) gets NaN weights (0/0 in the focus term)", "use `focus_eps = 1e-7`",
                          on_value=True)
        return
    if _number(eps) == 0:
        yield Finding(("eps",), "`eps = 0`: a tensor whose gradient is all zero (LoRA A on step 1) gets NaN weights "
                      "(0 / (sqrt(0) + 0))", "use `eps = 1e-8`", on_value=True)


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


# -- resets and SCORN/REMASTER/Persona knobs ---------------------------------------------------------
@register("OPT501", "reset-interval-small", "warning", "rule",
          "`reset_interval` between 1 and 99.",
          why="The docs recommend >= 100; 1 resets every step (the optimizer becomes stateless).",
          bad="[optimizer]\ntype='scorn'\nreset_interval=10",
          good="[optimizer]\ntype='scorn'\nreset_interval=0", fix="use `reset_interval >= 100` or 0", types=RESET_TYPES)
def reset_small(ctx: RuleContext) -> Iterator[Finding]:
    v = ctx.get("reset_interval")
    if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 100:
        extra = ": every step is a first step (stateless optimizer)" if v == 1 else ""
        yield Finding(("reset_interval",), f"`reset_interval = {v}` resets the moments every few steps{extra}",
                      "use `reset_interval = 0` (off) or >= 100", on_value=True)


@register("OPT502", "reset-increment-without-interval", "warning", "rule",
          "`reset_increment` set while `reset_interval = 0`: resets are off, so it does nothing.",
          bad="[optimizer]\ntype='remaster'\nreset_increment=100\northograd=false",
          good="[optimizer]\ntype='remaster'\northograd=false",
          fix="set `reset_interval` too, or remove `reset_increment`",
          types=RESET_TYPES)
def reset_increment_alone(ctx: RuleContext) -> Iterator[Finding]:
    inc = ctx.get("reset_increment")
    if isinstance(inc, int) and inc > 0 and (ctx.get("reset_interval") or 0) == 0:
        yield Finding(("reset_increment",), f"`reset_increment = {inc}` does nothing: resets are gated on "
                      "`reset_interval > 0`", "set `reset_interval` (>= 100) or remove `reset_increment`")


@register("OPT503", "focus-ratio-range", "warning", "rule",
          "SCORN `focus_ratio` outside the documented 0.0-0.2.",
          bad="[optimizer]\ntype='scorn'\nfocus_ratio=0.5",
          good="[optimizer]\ntype='scorn'\nfocus_ratio=0.1", fix="use a value in 0.0-0.2", types=("scorn",))
def focus_ratio_range(ctx: RuleContext) -> Iterator[Finding]:
    v = ctx.num("focus_ratio")
    if v is not None and not (0.0 <= v <= 0.2):
        yield Finding(("focus_ratio",), f"`focus_ratio = {v:g}` is outside the recommended 0.0-0.2",
                      "use a value in 0.0-0.2", on_value=True)


@register("OPT504", "reset-period-off-by-one", "info", "rule",
          "The originals reset one step earlier than documented after the first reset.",
          why="Resets happen on step T0, then every T_n - 1 steps (100 -> 100, 199, 298...).",
          bad="[optimizer]\ntype='persona'\nreset_interval=100",
          good="[optimizer]\ntype='persona'\nreset_interval=100\nexact_reset_period=true",
          fix="accept it, or set `exact_reset_period = true` with optinspect's "
          "optimizers", types=RESET_TYPES)
def reset_schedule(ctx: RuleContext) -> Iterator[Finding]:
    iv, inc = ctx.get("reset_interval"), ctx.get("reset_increment") or 0
    if isinstance(iv, int) and iv > 0 and isinstance(inc, int):
        exact = _truthy(ctx.get("exact_reset_period"))
        horizon = max(10 * (iv + 2 * inc), 1000)
        steps = reset_steps(iv, inc, exact=exact, horizon=horizon)
        docs = reset_steps(iv, inc, exact=True, horizon=horizon)
        if not exact and steps != docs:
            yield Finding(("reset_interval",), f"resets will happen on steps {', '.join(map(str, steps))}, ... "
                          f"(the README's period gives {', '.join(map(str, docs))}, ...)",
                          "set `exact_reset_period = true` with optinspect's optimizers for the documented "
                          "period", on_value=True)


@register("OPT505", "cautious-min-range", "warning", "rule",
          "SCORN/REMASTER `cautious_min` outside [0, 1]: >= 1 is off, < 0 acts as 0.",
          bad="[optimizer]\ntype='scorn'\ncautious_min=2.0",
          good="[optimizer]\ntype='scorn'\ncautious_min=0.5", fix="use a value in [0, 1]", types=("scorn", "remaster"))
def cautious_range(ctx: RuleContext) -> Iterator[Finding]:
    v = ctx.num("cautious_min")
    if v is not None and not (0 <= v <= 1):
        yield Finding(("cautious_min",), f"`cautious_min = {v:g}` is outside [0, 1]: it acts as "
                      f"{'1 (off)' if v > 1 else '0 (full mask)'}", "use a value in [0, 1]", on_value=True)


@register("OPT506", "constrain-ignores-weight-decay", "warning", "rule",
          "`constrain = true` ignores `weight_decay`.",
          bad="[optimizer]\ntype='scorn'\nconstrain=true\nweight_decay=0.01",
          good="[optimizer]\ntype='scorn'\nconstrain=true", fix="remove one of them", types=("scorn", "persona"))
def constrain_wd(ctx: RuleContext) -> Iterator[Finding]:
    if _truthy(ctx.get("constrain")) and ctx.has("weight_decay") and (ctx.num("weight_decay") or 0) > 0:
        yield Finding(("weight_decay",), "`weight_decay` is ignored because `constrain = true` shrinks the "
                      "weights instead", "remove `weight_decay` or `constrain`")


@register("OPT507", "remaster-orthograd-floor", "info", "rule",
          "REMASTER `orthograd` (default true) shrinks tiny gradients, as LoRA's are.",
          why="The orthogonalised gradient is renormalised with a floor of 1e-3: LoRA gradients with norm below "
              "it are shrunk rather than renormalised.", bad="[adapter]\ntype='lora'\n[optimizer]\ntype='remaster'",
          good="[adapter]\ntype='lora'\n[optimizer]\ntype='remaster'\northograd=false",
          fix="set `orthograd = false`, or `orthograd_floor = 1e-6` with optinspect's "
          "REMASTER", types=("remaster",))
def remaster_floor(ctx: RuleContext) -> Iterator[Finding]:
    if isinstance(ctx.config.get("adapter"), dict) and _truthy(ctx.get("orthograd")) and not ctx.has("orthograd_floor"):
        key = ("orthograd",) if ctx.has("orthograd") else ("type",)
        yield Finding(key, "REMASTER's orthograd floor (1e-3) shrinks LoRA gradients whose norm is below it",
                      "set `orthograd_floor = 1e-6` (optinspect's REMASTER) or `orthograd = false`")


# -- trainer-level -----------------------------------------------------------------------------------
@register("OPT601", "gradient-release-data-parallel", "error", "rule",
          "`gradient_release = true` needs a data-parallel world size of 1.",
          why="The trainer asserts world size == pipeline_stages before training.",
          bad="pipeline_stages=1\n[optimizer]\ntype='adamw'\ngradient_release=true",
          good="pipeline_stages=2\n[optimizer]\ntype='adamw'\ngradient_release=true", options={"world_size": 2},
          fix="use one GPU per pipeline, or turn gradient_release off")
def gradient_release_dp(ctx: RuleContext) -> Iterator[Finding]:
    ws = ctx.options.world_size
    stages = ctx.top("pipeline_stages", 1)
    if _truthy(ctx.get("gradient_release")) and ws and isinstance(stages, int) and stages > 0 and ws // stages > 1:
        yield Finding(("gradient_release",), f"gradient release with {ws} GPUs and pipeline_stages = {stages} "
                      f"means {ws // stages} data-parallel ranks; the trainer asserts 1",
                      f"set `pipeline_stages = {ws}` or turn gradient_release off")


@register("OPT602", "gradient-release-accumulation", "info", "rule",
          "`gradient_release` with gradient accumulation rescales betas to beta^(1/N).",
          bad="gradient_accumulation_steps=4\n[optimizer]\ntype='adamw'\ngradient_release=true\nbetas=[0.9, 0.99]",
          good="gradient_accumulation_steps=1\n[optimizer]\ntype='adamw'\ngradient_release=true\nbetas=[0.9, 0.99]",
          fix="expect the effective betas shown")
def gradient_release_gas(ctx: RuleContext) -> Iterator[Finding]:
    gas = ctx.top("gradient_accumulation_steps", 1)
    if _truthy(ctx.get("gradient_release")) and isinstance(gas, int) and gas > 1:
        betas = ctx.get("betas") if ctx.has("betas") else None
        if isinstance(betas, list) and all(isinstance(b, (int, float)) for b in betas):
            eff = ", ".join(f"{b ** (1 / gas):.6g}" for b in betas)
            msg = f"with gradient_accumulation_steps = {gas} the trainer uses betas [{eff}] (beta^(1/{gas}))"
        else:
            msg = (f"with gradient_accumulation_steps = {gas} the trainer rescales betas only when `betas` is "
                   "written in the table; defaults stay unscaled")
        yield Finding(("gradient_release",), msg, "write `betas` explicitly to know what runs")


@register("OPT603", "gradient-release-clipping", "info", "rule",
          "`gradient_release` forces gradient clipping off.",
          bad="gradient_clipping=1.0\n[optimizer]\ntype='adamw'\ngradient_release=true",
          good="gradient_clipping=0.0\n[optimizer]\ntype='adamw'\ngradient_release=true",
          fix="remove `gradient_clipping`, it has no effect")
def gradient_release_clip(ctx: RuleContext) -> Iterator[Finding]:
    gc = ctx.top("gradient_clipping")
    if _truthy(ctx.get("gradient_release")) and isinstance(gc, (int, float)) and gc > 0:
        yield Finding(("gradient_clipping",), f"`gradient_clipping = {gc:g}` is ignored: gradient release "
                      "forces clipping to 0", "remove it", absolute=True)


@register("OPT701", "automagic-start-lr", "warning", "rule",
          "Automagic `lr` above 1e-3 is silently replaced by 1e-6.",
          bad="[optimizer]\ntype='automagic'\nlr=1e-2",
          good="[optimizer]\ntype='automagic'\nlr=1e-6", fix="use a start lr <= 1e-3", types=("automagic",))
def automagic_lr(ctx: RuleContext) -> Iterator[Finding]:
    lr = ctx.num("lr")
    if lr is not None and lr > 1e-3:
        yield Finding(("lr",), f"Automagic forces a start `lr = {lr:g}` above 1e-3 back to 1e-6",
                      "use a start lr <= 1e-3 (e.g. 1e-6)", on_value=True)


@register("OPT702", "optimi-kahan-off-on-bf16", "warning", "rule",
          "optimi `kahan_sum = false` on bf16 weights: small updates are rounded away.",
          bad="[adapter]\ndtype='bfloat16'\n[optimizer]\ntype='adamw_optimi'\nlr=1e-4\nkahan_sum=false",
          good="[adapter]\ndtype='bfloat16'\n[optimizer]\ntype='adamw_optimi'\nlr=1e-4",
          fix="remove `kahan_sum = false`", types=("adamw_optimi", "stableadamw"))
def optimi_kahan(ctx: RuleContext) -> Iterator[Finding]:
    if ctx.get("kahan_sum") is False and ctx.trained_dtype in LOW_PRECISION:
        yield Finding(("kahan_sum",), f"`kahan_sum = false` on {ctx.trained_dtype} weights: updates below "
                      "the weights' resolution are lost", "remove `kahan_sum = false`")


@register("OPT703", "automagic-lr-bounds", "error", "rule",
          "Automagic `min_lr` above `max_lr`.", bad="[optimizer]\ntype='automagic'\nmin_lr=1e-3\nmax_lr=1e-4",
          good="[optimizer]\ntype='automagic'\nmin_lr=1e-7\nmax_lr=1e-4",
          fix="swap them", types=("automagic",))
def automagic_bounds(ctx: RuleContext) -> Iterator[Finding]:
    lo, hi = ctx.num("min_lr"), ctx.num("max_lr")
    if lo is not None and hi is not None and lo > hi:
        yield Finding(("min_lr",), f"`min_lr = {lo:g}` is above `max_lr = {hi:g}`", "swap them")


@register("OPT704", "sgd-nesterov-without-momentum", "error", "rule",
          "`nesterov = true` without momentum, or with dampening: torch's SGD raises ValueError at construction.",
          why="Nesterov momentum is defined only with a momentum buffer and no dampening; torch refuses the "
              "arguments before the first step, after the model has loaded.",
          bad="[optimizer]\ntype='sgd'\nlr=1e-3\nnesterov=true",
          good="[optimizer]\ntype='sgd'\nlr=1e-3\nnesterov=true\nmomentum=0.9",
          fix="add `momentum = 0.9` (and no `dampening`)",
          types=("sgd",))
def sgd_nesterov(ctx: RuleContext) -> Iterator[Finding]:
    if _truthy(ctx.get("nesterov")):
        momentum, dampening = _number(ctx.get("momentum")) or 0.0, _number(ctx.get("dampening")) or 0.0
        if momentum <= 0 or dampening != 0:
            what = "no momentum" if momentum <= 0 else f"`dampening = {dampening:g}`"
            yield Finding(("nesterov",), f"`nesterov = true` with {what}: torch's SGD raises ValueError (\"Nesterov "
                          "momentum requires a momentum and zero dampening\")",
                          "add `momentum = 0.9`" if momentum <= 0 else "remove `dampening`")


@register("OPT705", "adamw-integer-betas", "error", "rule",
          "torch's AdamW with an integer in `betas` (`[0, 0.999]`, `[0, 0]`): it raises ValueError.",
          why="torch.optim.AdamW requires both betas to be floats (\"betas must be either both floats or both "
              "Tensors\"); TOML reads 0 as an integer. (A mixed [0, 0.999] fails even earlier, in the reader: OPT007.)",
          bad="[optimizer]\ntype='adamw'\nlr=1e-4\nbetas=[0, 0]",
          good="[optimizer]\ntype='adamw'\nlr=1e-4\nbetas=[0.0, 0.0]",
          fix="write the betas as floats: `betas = [0.0, 0.0]`",
          types=("adamw",))
def adamw_integer_betas(ctx: RuleContext) -> Iterator[Finding]:
    betas = ctx.get("betas")
    if isinstance(betas, list) and any(isinstance(b, int) and not isinstance(b, bool) for b in betas):
        fixed = ", ".join(repr(float(b)) if isinstance(b, (int, float)) and not isinstance(b, bool) else str(b)
                          for b in betas)
        yield Finding(("betas",), "`betas` holds an integer: torch's AdamW raises ValueError (\"betas must be either "
                      "both floats or both Tensors\")", f"write `betas = [{fixed}]`", on_value=True)


# Types whose lr default is the library's own (checked against the constructors' signatures in the tests)
LIBRARY_LR_TYPES = ("adamw", "adamw8bit", "adamw8bitkahan", "sgd")
DIFFUSION_LR = 1e-4  # the upper end of what diffusion fine-tunes use (1e-5 .. 1e-4)


@register("OPT115", "lr-library-default", "warning", "rule",
          "`lr` is not set, so the library's default applies (1e-3 for AdamW, AdamW8bit and SGD).",
          why="The optimizer gets no lr keyword and uses its constructor's default, 10x or more above the 1e-5 to "
              "1e-4 that diffusion fine-tunes train at: the run looks fine and diverges or overshoots.",
          bad="[optimizer]\ntype='adamw8bit'\nweight_decay=0.01",
          good="[optimizer]\ntype='adamw8bit'\nlr=1e-4", fix="write the lr you mean, e.g. `lr = 1e-4`",
          types=LIBRARY_LR_TYPES)
def lr_library_default(ctx: RuleContext) -> Iterator[Finding]:
    default = ctx.num("lr")
    if not ctx.has("lr") and default is not None and default > DIFFUSION_LR:
        yield Finding(("type",), f"`lr` is not set: the constructor's default `lr = {default:g}` applies, "
                      f"above the {DIFFUSION_LR:g} diffusion fine-tunes train at", "write e.g. `lr = 1e-4`")


# top-level keys that mean an optimizer setting but are read by no one (the trainer reads [optimizer] only)
STRAY_OPTIMIZER_KEYS = ("lr", "learning_rate", "weight_decay", "betas", "eps", "optimizer_type", "optimizer_args")


@register("OPT116", "top-level-optimizer-setting", "warning", "rule",
          "An optimizer setting written at the top level of the file, which the trainer never reads.",
          why="diffusion-pipe builds the optimizer from the [optimizer] table alone; a top-level `learning_rate` "
              "(a habit from other trainers) changes nothing, while the table's own value (or the default) runs.",
          bad="learning_rate=2e-4\n[optimizer]\ntype='adamw'\nlr=1e-4",
          good="epochs=1\n[optimizer]\ntype='adamw'\nlr=1e-4", fix="move it into [optimizer] as `lr`",
          trainer_only=True)
def top_level_optimizer_setting(ctx: RuleContext) -> Iterator[Finding]:
    for key in STRAY_OPTIMIZER_KEYS:
        if key in ctx.config:
            name = "lr" if key in ("lr", "learning_rate") else key
            yield Finding((key,), f"top-level `{key}` is not read by the trainer: the optimizer is built from "
                          "[optimizer] alone", "move it into [optimizer]" + (f" as `{name}`" if name != key else ""),
                          absolute=True)


# -- the trainers ------------------------------------------------------------------------------------
def _either(ctx: RuleContext) -> str:
    return "pass `--trainer upstream` or `--trainer chroma` to say which trainer runs it"


def _half_life_upstream_problem(ctx: RuleContext) -> str | None:
    """Why upstream's rewrite of betas[1] from beta2_half_life fails, or None."""
    v = ctx.table["beta2_half_life"]
    betas = ctx.table.get("betas")
    if betas is None:
        return "upstream diffusion-pipe rewrites `betas[1]` from it and reads `betas` from the table: KeyError"
    if not isinstance(betas, list) or len(betas) != 2:
        return "upstream diffusion-pipe asserts that `betas` has two elements: AssertionError"
    n = float(v) if isinstance(v, (int, float)) else None  # true is 1 there, as in any Python arithmetic
    if n is None:
        return "upstream diffusion-pipe divides by it: TypeError"
    if n <= 0:
        return ("upstream diffusion-pipe computes 0.5 ** (batch / half-life): " +
                ("ZeroDivisionError" if n == 0 else "a beta2 above 1"))
    return None


@register("OPT117", "beta2-half-life", "error", "rule",
          "`beta2_half_life`: upstream diffusion-pipe derives betas[1] from it; diffusion-chroma passes it to the "
          "optimizer's constructor, which fails (or, with **kwargs, drops it).",
          why="Upstream pops the key, sets betas[1] = 0.5 ** (global batch size / half-life) and needs `betas` (two "
              "of them) in the table; the chroma fork does not handle the key at all. Which trainer runs a table of "
              "a type both have cannot be read from the table: without --trainer this is a warning naming both.",
          bad="[optimizer]\ntype='scorn'\nlr=1e-4\nbetas=[0.95, 0.9999]\nbeta2_half_life=1000.0",
          good="[optimizer]\ntype='scorn'\nlr=1e-4\nbetas=[0.95, 0.9999]",
          fix="remove `beta2_half_life` (chroma), or give `betas = [b1, b2]` beside it (upstream)", trainer_only=True)
def beta2_half_life(ctx: RuleContext) -> Iterator[Finding]:
    if not ctx.has("beta2_half_life"):
        return
    swallow = specs.TYPES[ctx.schema].kwargs == "swallow" if ctx.schema in specs.TYPES else False
    chroma = ("diffusion-chroma passes it to the constructor, whose **kwargs silently drop it" if swallow else
              "diffusion-chroma passes it to the constructor: TypeError before training")
    upstream = _half_life_upstream_problem(ctx)
    if ctx.trainer == specs.CHROMA:
        yield Finding(("beta2_half_life",), f"`beta2_half_life`: {chroma}", "remove it; set `betas` directly",
                      on_value=True)
    elif upstream:
        yield Finding(("beta2_half_life",), f"`beta2_half_life`: {upstream}",
                      "give `betas = [b1, b2]` beside it, or remove it", on_value=True)
    elif ctx.trainer is None:
        yield Finding(("beta2_half_life",), "`beta2_half_life` works in upstream diffusion-pipe (betas[1] = 0.5 ** "
                      f"(global batch size / half-life)), but {chroma}", _either(ctx),
                      severity=Severity.WARNING, on_value=True)


@register("OPT118", "type-broken-in-trainer", "error", "rule",
          "A built-in type that fails in this trainer before training (automagic in diffusion-chroma).",
          why="diffusion-chroma lists automagic among its types, but its optimizer module imports optimum.quanto, "
              "which the fork's requirements do not install. Without --trainer this is a warning.",
          bad="[optimizer]\ntype='automagic'\nlr=1e-6", good="[optimizer]\ntype='adamw'\nlr=1e-6",
          options={"trainer_profile": "chroma"}, fix="use another type, or install what the trainer's module imports",
          trainer_only=True)
def type_broken_in_trainer(ctx: RuleContext) -> Iterator[Finding]:
    for name in specs.TRAINERS if ctx.trainer is None else (ctx.trainer,):
        why = specs.PROFILES[name].broken.get(ctx.schema or "")
        if why:
            title = specs.PROFILES[name].title
            yield Finding(("type",), f"in {title}, `type = '{ctx.type_name}'` fails: {why}",
                          _either(ctx) if ctx.trainer is None else "choose another type",
                          severity=None if ctx.trainer else Severity.WARNING, on_value=True)


@register("OPT706", "fused-and-foreach", "error", "rule",
          "torch AdamW/SGD with both `fused` and `foreach` on.",
          why="torch raises \"`fused` and `foreach` cannot be `True` together\" at the first step.",
          bad="[optimizer]\ntype='adamw'\nlr=1e-4\nfused=true\nforeach=true",
          good="[optimizer]\ntype='adamw'\nlr=1e-4\nfused=true", fix="keep one of them", types=("adamw", "sgd"))
def fused_and_foreach(ctx: RuleContext) -> Iterator[Finding]:
    if _truthy(ctx.get("fused")) and _truthy(ctx.get("foreach")):
        yield Finding(("foreach",), "`fused` and `foreach` are both on: torch raises RuntimeError at the first step",
                      "remove `foreach` (fused is the faster one)")


@register("OPT707", "fused-needs-booleans", "error", "rule",
          "torch AdamW/SGD with `fused` on and a flag written as a number (`amsgrad = 1`).",
          why="The fused kernels take their flags as real booleans: a number there is a TypeError at the first step "
              "(without `fused` torch tests it for truth and it runs, OPT114).",
          bad="[optimizer]\ntype='adamw'\nlr=1e-4\nfused=true\namsgrad=0",
          good="[optimizer]\ntype='adamw'\nlr=1e-4\nfused=true\namsgrad=false",
          fix="write the flag as true or false", types=("adamw", "sgd"))
def fused_needs_booleans(ctx: RuleContext) -> Iterator[Finding]:
    if not _truthy(ctx.get("fused")):
        return
    for k in ("amsgrad", "maximize", "nesterov"):
        v = ctx.table.get(k)
        if v is not None and not isinstance(v, bool):
            yield Finding((k,), f"`{k} = {show(k, v)}` with `fused` on: the fused kernel takes a real boolean "
                          "(TypeError at the first step)", f"write `{k} = {'true' if v else 'false'}`", on_value=True)


@register("OPT708", "differentiable-step", "error", "rule",
          "torch AdamW/SGD with `differentiable = true`: the step fails on the model's parameters.",
          why="`differentiable` runs the update with autograd on, for meta-learning; on ordinary leaf parameters the "
              "in-place update raises \"a leaf Variable that requires grad is being used in an in-place operation\".",
          bad="[optimizer]\ntype='sgd'\nlr=1e-3\ndifferentiable=true",
          good="[optimizer]\ntype='sgd'\nlr=1e-3", fix="remove `differentiable`", types=("adamw", "sgd"))
def differentiable_step(ctx: RuleContext) -> Iterator[Finding]:
    if _truthy(ctx.table.get("differentiable")):
        yield Finding(("differentiable",), "`differentiable` on: the in-place update of the model's parameters "
                      "raises RuntimeError at the first step", "remove it (it is for differentiating through the step)",
                      on_value=True)


# Magnitudes past which the weights run away within a few steps (measured with the trainer's classes on the
# oracle's model: weight_decay 1e10, lr 1e10, Prodigy d0 1e10 all NaN by step 8); far outside any practice.
PRODIGY_LR_OVERFLOW = 1000.0  # measured with pytorch_optimizer's Prodigy: finite to 1e5, NaN at 1e6
RUNAWAY = {"lr": 1.0, "weight_decay": 1.0, "d0": 1.0, "momentum": 1.0, "d_coef": 10.0}


@register("OPT410", "runaway-magnitude", "warning", "rule",
          "`lr`, `weight_decay`, SGD `momentum` or Prodigy `d0` above 1 (`d_coef` above 10): the weights grow without "
          "bound and turn NaN.",
          why="Decoupled decay multiplies the weights by (1 - lr * weight_decay) and the step scales with lr (and "
              "Prodigy's d): past 1 the weights change sign and grow every step. Prodigy's own lr is a multiplier "
              "of about 1 and is exempt.",
          bad="[optimizer]\ntype='adamw'\nlr=1e-4\nweight_decay=100.0",
          good="[optimizer]\ntype='adamw'\nlr=1e-4\nweight_decay=0.01", fix="use the usual scale (lr 1e-5..1e-3, "
          "weight_decay 0..0.1)")
def runaway_magnitude(ctx: RuleContext) -> Iterator[Finding]:
    if ctx.schema == "prodigy" and (_number(ctx.table.get("lr")) or 0) > PRODIGY_LR_OVERFLOW:
        yield Finding(("lr",), f"`lr = {show('lr', ctx.table['lr'])}` multiplies Prodigy's adapted step: far above "
                      "its scale of 1, d * lr overflows (RuntimeError at 1e10) or turns NaN (1e6)",
                      "use `lr = 1.0`", severity=Severity.ERROR, on_value=True)
    for key, limit in RUNAWAY.items():
        if key == "lr" and ctx.schema == "prodigy":
            continue
        v = _number(ctx.table.get(key))
        if v is not None and math.isfinite(v) and v > limit:
            yield Finding((key,), f"`{key} = {show(key, v)}` is above {limit:g}: the weights run away and turn NaN "
                          "within a few steps", "use the usual scale for it", on_value=True)


@register("OPT411", "adamw8bitkahan-eps-overflow", "error", "rule",
          "AdamW8bitKahan with `stabilize` (its default) and `eps >= 16`: its 8-bit state overflows at step 1.",
          why="With stabilize the first step quantizes a value scaled by eps into the uint8 state: from eps = 16 it "
              "does not fit (RuntimeError \"value cannot be converted to type uint8 without overflow\"; measured: "
              "15.9 runs, 16 fails).",
          bad="[optimizer]\ntype='AdamW8bitKahan'\nlr=1e-4\neps=16.0",
          good="[optimizer]\ntype='AdamW8bitKahan'\nlr=1e-4\neps=1e-8",
          options={"versions": {"bitsandbytes": "0.49.2"}}, fix="keep eps near its default 1e-8",
          types=("adamw8bitkahan",))
def adamw8bitkahan_eps_overflow(ctx: RuleContext) -> Iterator[Finding]:
    eps = _number(ctx.get("eps"))
    if eps is not None and eps >= 16 and _truthy(ctx.get("stabilize")):
        yield Finding(("eps",), f"`eps = {show('eps', eps)}` with `stabilize` on: the first step overflows the "
                      "8-bit state (RuntimeError)", "keep eps near its default 1e-8", on_value=True)
