"""Read a trainer config, check its [optimizer] table with the schemas and the rules, return diagnostics.

The pipeline, top to bottom: read the file (reader) -> positions (source.scan) -> TOML -> what the trainer's own
reader rejects (reader) -> the table's shape and type (here) -> schema (schema_check) -> rules -> suppression
and limits (here). Nothing here prints or exits; the CLI decides what to do with the FileReport.
"""

from __future__ import annotations

import collections
from dataclasses import replace

from optinspect import specs
from optinspect.config import catalog, schemas, source
from optinspect.config.context import OPT, Options, RuleContext, diag, show, toml_kind
from optinspect.config.reader import parse, read_file, trainer_reader
from optinspect.config.registry import all_rules
from optinspect.config.schema_check import schema_diagnostics
from optinspect.diagnostics import Diagnostic, FileReport, Severity, Span

__all__ = ["Options", "RuleContext", "validate_file", "validate_text", "validate_table", "show"]

FOREIGN_KEYS = frozenset({"optimizer_type", "optimizer_args", "optimizer_name", "optimizer_kwargs", "name", "params"})
# top-level keys of kohya sd-scripts and musubi-tuner configs: another trainer's layout, not checked here
OTHER_TRAINER_KEYS = frozenset({"optimizer_type", "optimizer_args", "learning_rate", "lr_scheduler",
                                "max_train_steps", "pretrained_model_name_or_path", "network_module"})


MAX_FINDINGS = 200  # per file; the rest are counted by one OPT009 finding


def validate_file(path: str, options: Options | None = None) -> FileReport:
    text, diags, unreadable = read_file(path)
    report = FileReport(path=path, diagnostics=diags, unreadable=unreadable)
    if text is None:
        return report
    return validate_text(path, text, options, report)


def validate_text(path: str, text: str, options: Options | None = None,
                  report: FileReport | None = None) -> FileReport:
    options = options or Options()
    report = report or FileReport(path=path)
    report.source = text
    smap = source.scan(text)
    found: list[Diagnostic] = []
    data = parse(path, text, smap, found)
    report.data = data
    if data is not None:
        found.extend(trainer_reader(path, data, smap))
        found.extend(_check_config(path, data, smap, options, report))
    _finish(report, report.diagnostics + found, smap, options)
    return report


def _check_config(path: str, data: dict, smap: source.SourceMap, options: Options,
                  report: FileReport) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    if "optimizer" not in data:
        if options.require_optimizer:
            out.append(diag(path, Span(1, 1, 1, 1), "OPT004", "no [optimizer] table in this file",
                             "add an [optimizer] table, or drop --require-optimizer for non-trainer files"))
        other = sorted(k for k in data if k in OTHER_TRAINER_KEYS)
        if other:  # said, so that "no problems found" is not read as "checked and fine"
            out.append(diag(path, smap.locate((other[0],)), "OPT010",
                             f"a kohya sd-scripts / musubi-tuner style config ({', '.join(f'`{k}`' for k in other)}): "
                             "optinspect checks diffusion-pipe's [optimizer] table, so nothing in this file was "
                             "checked",
                             "run optinspect on diffusion-pipe configs; this file's optimizer settings are not judged"))
        return out
    table = data["optimizer"]
    span = smap.locate(OPT)
    if not isinstance(table, dict):
        what = "an array of tables ([[optimizer]])" if isinstance(table, list) else f"a {toml_kind(table)}"
        out.append(diag(path, span, "OPT005", f"`optimizer` is {what}, not a table",
                         "write one [optimizer] table with `type = '...'` and the constructor's keys"))
        return out
    foreign = sorted(k for k in table if k in FOREIGN_KEYS)
    if foreign and "type" not in table:
        out.append(diag(path, span, "OPT006",
                         f"not a diffusion-pipe [optimizer] table: it uses {', '.join(f'`{k}`' for k in foreign)} "
                         "(another trainer's layout)",
                         "write `type = '<optimizer>'` and the constructor's keywords as keys of the table"))
        return out
    if "type" not in table:
        out.append(diag(path, span, "OPT110", "[optimizer] has no `type` key",
                         "add e.g. `type = 'adamw_optimi'`; see `optinspect schema` for the known types"))
        return out
    type_name = table["type"]
    tspan = smap.locate(OPT + ("type",), prefer_value=True)
    if not isinstance(type_name, str):
        out.append(diag(path, tspan, "OPT107", f"`type` must be a string, not {toml_kind(type_name)}",
                         "write e.g. `type = 'adamw'`"))
        return out
    report.optimizer_type = type_name
    trainer, report.trainer_reason = options.trainer_profile, "--trainer"
    if trainer is None:
        trainer, report.trainer_reason = catalog.infer_trainer(type_name)
    report.trainer = trainer
    res = catalog.resolve_type(type_name, trainer)
    if res.source == "unknown":
        out.append(diag(path, tspan, "OPT101", *_unknown_type(type_name, res, trainer)))
        return out
    if res.schema is None:
        return out  # a pytorch_optimizer class we have no schema for: nothing more to check
    ctx = RuleContext(table, data, type_name, res.schema, options, schemas.defaults(res.schema), trainer)
    from_rules = _rule_diagnostics(path, ctx, smap)
    explained = {(d.line, d.column) for d in from_rules if d.severity is Severity.ERROR}
    # a rule that explains a value says more than the schema's generic type/range message for it
    out.extend(d for d in schema_diagnostics(path, ctx, smap)
               if not (d.code in ("OPT106", "OPT107") and (d.line, d.column) in explained))
    out.extend(from_rules)
    return out


def _unknown_type(type_name: str, res: catalog.Resolution, trainer: str | None) -> tuple[str, str]:
    """OPT101's message and hint: another trainer's type, a case slip in a pytorch_optimizer name, or a typo."""
    if res.other_trainer:
        other, this = specs.PROFILES[res.other_trainer].title, specs.PROFILES[trainer].title
        return (f"`type = '{type_name}'` is a built-in type of {other}, not of {this}: {this} looks it up in "
                f"pytorch_optimizer, which has no `{type_name}` (AttributeError before training)",
                f"run this config with {other}, or choose a type {this} has")
    if res.case_fix:
        return (f"`type = '{type_name}'` is not a built-in type, and the pytorch_optimizer fallback is "
                f"case-sensitive: pytorch_optimizer has `{res.case_fix}`, not `{type_name}`",
                f"write `type = '{res.case_fix}'`")
    return (f"unknown optimizer type `{type_name}`",
            f"did you mean {', '.join(repr(s) for s in res.suggestions)}?" if res.suggestions
            else "see `optinspect schema` for the known types")


# -- rules -------------------------------------------------------------------------------------------
def _rule_diagnostics(path: str, ctx: RuleContext, smap: source.SourceMap) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for rule in all_rules().values():
        if rule.check is None or (rule.types and ctx.schema not in rule.types):
            continue
        if rule.trainer_only and not ctx.options.trainer:
            continue
        for f in rule.check(ctx):
            where = f.key if f.absolute else OPT + f.key
            span = smap.locate(where, prefer_value=f.on_value) if f.key else smap.locate(OPT)
            out.append(diag(path, span, rule.code, f.message, f.hint or rule.fix, f.severity))
    return out


def _finish(report: FileReport, diags: list[Diagnostic], smap: source.SourceMap, options: Options) -> None:
    from optinspect.config.secrets import redact, secret_values

    report.secrets = secret_values(report.data) if report.data else set()
    if report.secrets:  # a message or hint may quote a value: redacted here, so every format is covered
        diags = [replace(d, message=redact(d.message, report.secrets), hint=redact(d.hint, report.secrets))
                 for d in diags]
    kept = []
    seen = set()
    for d in diags:
        sup = smap.suppressions.get(d.line, set())
        if d.code in options.ignore or d.code in sup or "*" in sup:
            report.suppressed += 1
            continue
        ident = (d.line, d.column, d.code, d.message)
        if ident in seen:
            continue
        seen.add(ident)
        kept.append(d)
    kept.sort(key=lambda d: d.sort_key)
    if len(kept) > MAX_FINDINGS:
        hidden = kept[MAX_FINDINGS:]
        worst = min((d.severity for d in hidden), key=lambda s: s.rank)
        counts = collections.Counter(d.code for d in hidden)
        what = ", ".join(f"{n:,} {code}" for code, n in counts.most_common(5))
        kept = kept[:MAX_FINDINGS] + [diag(report.path, Span(hidden[0].line, 1, hidden[0].line, 1), "OPT009",
                                            f"{len(hidden):,} more findings not shown ({what})",
                                            "fix the findings shown and run again", severity=worst)]
    report.diagnostics = kept


def validate_table(table: dict, config: dict | None = None, options: Options | None = None) -> list[Diagnostic]:
    """Check an [optimizer] table given as a dict (no file, so no positions): the API path of build_optimizer."""
    data = dict(config or {})
    data["optimizer"] = table
    report = FileReport(path="<optimizer table>")
    options = options or Options()
    found = _check_config(report.path, data, source.SourceMap(), options, report)
    _finish(report, found, source.SourceMap(), options)
    return report.diagnostics
