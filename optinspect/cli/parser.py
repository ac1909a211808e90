"""Every subcommand's arguments, in one parser. Nothing heavy is imported here: each command names the module
that runs it (`run=`), imported only when that command is chosen."""

from __future__ import annotations

import argparse
import sys

from optinspect.cli.common import EXIT_USAGE, positive_int
from optinspect.state.limits import MAX_TENSORS

DESCRIPTION = ("Check a diffusion trainer's [optimizer] table before the run, dry-run the optimizer it builds, "
               "and look inside saved optimizer state.")
STATE_HELP = ".pt/.bin/.safetensors file or checkpoint folder"
MODEL_HELP = "model .safetensors to name parameters by order and shape"
OPTIMIZER_HELP = "which optimizer of a checkpoint that holds several (Lightning, Accelerate; default 0)"
MAX_TENSORS_HELP = f"refuse a state of more tensors than this (default {MAX_TENSORS:,}: a bound on time and memory)"


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2 with one clear line, as argparse does
        self.print_usage(sys.stderr)
        sys.stderr.write(f"optinspect: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


class _SortKeys:
    """The sort orders the view model defines, looked up only when --sort is used or help is shown (the view is
    not needed, and not imported, for any other command)."""

    def _keys(self) -> list[str]:
        from optinspect.render.view import SORT_CHOICES

        return SORT_CHOICES

    def __contains__(self, key: object) -> bool:
        return key in self._keys()

    def __iter__(self):
        return iter(self._keys())


def _state_options(c: argparse.ArgumentParser, pair: bool = False) -> None:
    """What every command that reads saved state takes: naming, which optimizer, the bound on tensors (`pair`:
    it reads two states, which share the bound)."""
    c.add_argument("--model", metavar="FILE", help=MODEL_HELP)
    c.add_argument("--optimizer", type=int, default=0, metavar="N", help=OPTIMIZER_HELP)
    c.add_argument("--max-tensors", type=positive_int, default=MAX_TENSORS, metavar="N",
                   help=MAX_TENSORS_HELP + ("; half of it for each of two states" if pair else ""))


def build_parser() -> argparse.ArgumentParser:
    from optinspect import __version__

    p = Parser(prog="optinspect", description=DESCRIPTION,
               epilog="`optinspect COMMAND --help` for each command's options. Exit status: 0 fine; 1 when "
                      "validate finds errors or a dry-run is not healthy; 2 usage error or unreadable input.")
    p.add_argument("--version", action="version", version=f"optinspect {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def command(name: str, module: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        c.set_defaults(run=module)
        return c

    v = command("validate", "validate", "check the [optimizer] table of trainer configs")
    v.add_argument("files", nargs="+", metavar="PATH", help="trainer configs (.toml), or folders to search for them")
    v.add_argument("--format", choices=["text", "json", "github", "sarif"], default="text",
                   help="text for people; json, GitHub annotations or SARIF for tools (default: text)")
    v.add_argument("--strict", action="store_true", help="warnings also fail (exit 1)")
    v.add_argument("--ignore", action="append", default=[], metavar="CODE", help="skip a rule (repeatable, "
                   "or comma-separated)")
    v.add_argument("--require-optimizer", action="store_true", help="a file without [optimizer] is an error")
    v.add_argument("--world-size", type=positive_int, default=None, help="number of GPUs the run will use (OPT601)")
    v.add_argument("--trainer", choices=["upstream", "chroma"], default=None,
                   help="judge as upstream diffusion-pipe or diffusion-chroma (default: inferred from the type where "
                        "only one trainer has it, else both, with a warning where they differ)")
    v.add_argument("--quiet", "-q", action="store_true", help="no summary line when nothing was found")

    command("rules", "catalogue", "list every rule code")
    e = command("explain", "catalogue", "the long form of one rule")
    e.add_argument("code", help="a rule code such as OPT301 (`optinspect rules` lists them)")

    s = command("schema", "catalogue", "print a JSON Schema (the whole-config one without TYPE)")
    s.add_argument("type", nargs="?", help="an optimizer type as written in the config, e.g. adafactor")
    s.add_argument("--path", action="store_true", help="print the schema file's path instead")
    s.add_argument("--list", action="store_true", help="list the optimizer types that have a schema")

    d = command("dry-run", "dryrun", "build the optimizer from a config and take real steps")
    d.add_argument("config", help="trainer config (.toml) with an [optimizer] table")
    d.add_argument("--steps", type=positive_int, default=10, help="optimizer steps to take (default: 10)")
    d.add_argument("--shapes-from", metavar="MODEL.safetensors", help="real parameter shapes (header only)")
    d.add_argument("--max-params", type=positive_int, default=4_000_000, metavar="N",
                   help="elements to step on with --shapes-from (default: 4,000,000)")
    d.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="parameter dtype (default: [adapter] or [model] dtype of the config)")
    d.add_argument("--device", default="cpu", help="torch device to step on: cpu, cuda, cuda:1, ... (default: cpu)")
    d.add_argument("--seed", type=int, default=0, help="seed of the model, its data and stochastic rounding")
    d.add_argument("--compare-fp32", action="store_true", help="also run a float32 shadow and report the drift")
    d.add_argument("--upcast", action="store_true", help="Prodigy: compute bf16/fp16 parameters in fp32 with "
                   "stochastic rounding (optinspect's option; the trainer's Prodigy computes in bf16)")
    d.add_argument("--compiled", action="store_true", help="Persona: its elementwise step through torch.compile "
                   "(optinspect's option; within a few ulps of the exact step, which stays the default)")
    d.add_argument("--save", metavar="PATH", help="write the optimizer state (.pt or .safetensors)")
    d.add_argument("--force", action="store_true", help="overwrite --save's file")
    d.add_argument("--json", action="store_true", help="print the report as JSON")

    i = command("inspect", "state", "statistics of a saved optimizer state, per tensor")
    i.add_argument("state", metavar="STATE", help=STATE_HELP)
    i.add_argument("--json", action="store_true", help="the full report as JSON")
    i.add_argument("--sort", default="index", choices=_SortKeys(), metavar="KEY",
                   help="row order: checkpoint order, name, or largest first (moments, update scale, "
                        "quantization error, flags, size); one of %(choices)s")
    i.add_argument("--filter", metavar="GLOB", help="only parameters whose name matches, e.g. '*attn*'")
    i.add_argument("--top", type=positive_int, metavar="N", help="only the first N rows after sorting")
    _state_options(i)

    r = command("resume", "resume", "what resuming STATE under CONFIG will really do (settings, lr, resets, fit)")
    r.add_argument("config", metavar="CONFIG", help="the trainer config the run will resume with")
    r.add_argument("state", metavar="STATE", help=STATE_HELP)
    r.add_argument("--model", metavar="FILE", help="the model .safetensors the state belongs to (count and shapes)")
    r.add_argument("--trainer", choices=["upstream", "chroma"], default=None,
                   help="the trainer that resumes (default: inferred from the type, else either)")
    r.add_argument("--reset-optimizer", action="store_true", help="upstream's --reset_optimizer: nothing loaded")
    r.add_argument("--reset-optimizer-params", action="store_true",
                   help="upstream's --reset_optimizer_params: the state loads, the config's settings are put back")
    r.add_argument("--format", choices=["text", "json", "github", "sarif"], default="text",
                   help="text for people; json (the plan and its findings), GitHub annotations or SARIF")

    t = command("tui", "tui", "interactive view of a saved optimizer state (two: their deltas)")
    t.add_argument("state", metavar="STATE", help=STATE_HELP)
    t.add_argument("other", metavar="B", nargs="?", help="a second state: show what changed from STATE to B")
    _state_options(t, pair=True)

    f = command("diff", "state", "compare two states of the same run (after a resume, say)")
    f.add_argument("a", metavar="A", help="the earlier state (file or checkpoint folder)")
    f.add_argument("b", metavar="B", help="the later state")
    f.add_argument("--json", action="store_true", help="the comparison as JSON")
    _state_options(f, pair=True)

    p.set_defaults(_commands=sub.choices)
    return p
