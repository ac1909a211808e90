"""Rich rendering of a DryRunReport (the engine computes; this only lays it out)."""

from __future__ import annotations

from optinspect.dryrun.report import DryRunReport
from optinspect.render import human_bytes, term


def render(report: DryRunReport, console) -> None:
    from rich.table import Table
    from rich.text import Text

    console.print(Text.assemble(("dry-run ", "bold"), (term(report.config), "bold cyan"),
                                term(f": {report.optimizer_type} -> "),
                                (report.optimizer_class, "green"), f" on {report.parameters:,} {report.dtype} "
                                f"parameters ({len(report.tensors)} tensors, {report.device}, seed {report.seed})"))
    console.print(Text(term(f"  class from {report.optimizer_file}"), style="dim"))
    t = Table("step", "loss", "update RMS", "max |update|", "non-finite", "ms", box=None, pad_edge=False)
    for s in report.steps:
        t.add_row(str(s.step), f"{s.loss:.6g}", f"{s.update_rms:.3e}", f"{s.update_max:.3e}",
                  Text(str(s.nonfinite), style="bold red" if s.nonfinite else ""), f"{s.seconds * 1e3:.2f}")
    console.print(t)
    match = "matches" if report.state_bytes_measured == report.state_bytes_predicted else "differs from"
    measured, predicted = human_bytes(report.state_bytes_measured), human_bytes(report.state_bytes_predicted)
    console.print(Text(f"optimizer state: {measured} measured ({match} the layout's {predicted}), "
                       f"{report.bytes_per_param:.2f} bytes per parameter"))
    fm = report.full_model
    if fm:
        what = f"LoRA rank {fm.lora_rank} on its 2-D weights" if fm.lora_rank else "every floating tensor"
        console.print(Text(f"full model {term(fm.path)}: {fm.parameters:,} parameters in {fm.tensors} tensors; "
                           "training "
                           f"{what}: {fm.trained_parameters:,} parameters -> optimizer state "
                           f"{fm.predicted_gib:.3f} GiB (AdamW fp32: {fm.adamw_fp32_gib:.3f} GiB)"))
    if report.drift is not None:
        d = Table("tensor", "shape", "drift vs fp32 (rel. to movement)", "max |diff|", box=None, pad_edge=False)
        for x in report.drift:
            d.add_row(Text(term(x.name)), str(x.shape), f"{x.drift_rel:.3e}", f"{x.max_abs:.3e}")
        console.print(d)
    for note in report.notes:
        console.print(Text(term(f"note: {note}"), style="yellow"))
    style = "bold green" if report.status == "healthy" else "bold red"
    console.print(Text(term(f"{report.status}" + (f": {report.message}" if report.message else "")), style=style))
