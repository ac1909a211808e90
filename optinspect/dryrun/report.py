"""What a dry-run found, as plain torch-free dataclasses: the renderer and JSON read these, never the engine."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    note: str = ""


@dataclass
class StepRecord:
    step: int
    loss: float
    update_rms: float
    update_max: float
    nonfinite: int
    seconds: float


@dataclass
class TensorDrift:
    name: str
    shape: list[int]
    drift_rel: float  # ||p - p_fp32|| / ||p_fp32 - p_init||
    max_abs: float


@dataclass
class FullModel:
    path: str
    tensors: int
    parameters: int
    trained_parameters: int
    predicted_gib: float
    adamw_fp32_gib: float
    lora_rank: int | None


@dataclass
class DryRunReport:
    config: str
    optimizer_type: str
    optimizer_class: str
    optimizer_file: str  # where the class was imported from: a trainer's optimizers/ folder would show here
    dtype: str
    device: str
    seed: int
    parameters: int
    tensors: list[dict]
    steps: list[StepRecord] = field(default_factory=list)
    state_bytes_measured: int = 0
    state_bytes_predicted: int = 0
    full_model: FullModel | None = None
    drift: list[TensorDrift] | None = None
    status: str = "healthy"  # healthy | non-finite | diverged | crashed
    message: str = ""
    notes: list[str] = field(default_factory=list)  # findings that do not fail the run (e.g. lost updates)

    @property
    def bytes_per_param(self) -> float:
        return self.state_bytes_measured / max(self.parameters, 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bytes_per_param"] = self.bytes_per_param
        return d


def drift_notes(drift: list[TensorDrift], dtype: str) -> list[str]:
    """Tensors whose low-precision run strayed from the float32 run by at least as far as that run moved: a
    tensor that did not move at all scores exactly 1, so there the updates were lost to rounding."""
    lost = [d for d in drift if d.drift_rel >= 1.0]
    if not lost:
        return []
    worst = max(lost, key=lambda d: d.drift_rel)
    still = sum(1 for d in lost if d.drift_rel == 1.0)
    return [f"{len(lost)} of {len(drift)} tensors strayed from the float32 run by at least as much as they moved "
            f"(worst {worst.name}: {worst.drift_rel:.3g}x; {still} did not move at all): at this step size their "
            f"updates are mostly below {dtype}'s resolution (stochastic rounding keeps them only on average, "
            "float32 master weights keep them)"]
