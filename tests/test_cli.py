"""The CLI: exit codes, output formats, the rule catalogue, and the light import path."""

import json
import os
import subprocess
import sys

import pytest

from .conftest import EXAMPLES, ROOT

GOOD = str(EXAMPLES / "chroma.toml")
BROKEN = str(EXAMPLES / "broken.toml")


def test_exit_codes(run_cli, tmp_path):
    assert run_cli("validate", GOOD)[0] == 0
    assert run_cli("validate", BROKEN)[0] == 1
    warn = tmp_path / "w.toml"
    warn.write_text("[optimizer]\ntype = 'scorn'\nfocus_ratio = 0.5\n")
    assert run_cli("validate", str(warn))[0] == 0
    assert run_cli("validate", "--strict", str(warn))[0] == 1
    assert run_cli("validate", str(tmp_path / "missing.toml"))[0] == 2
    assert run_cli("validate")[0] == 2  # usage
    assert run_cli("validate", "--format", "xml", GOOD)[0] == 2


def test_top_level_help_is_for_users(run_cli):
    """--help says what the tool does in whole sentences (it once printed half a line of a developer docstring),
    lists every command and the exit codes."""
    from optinspect.cli import DESCRIPTION

    rc, text, _ = run_cli("--help", env={"COLUMNS": "200"})
    assert rc == 0
    assert DESCRIPTION.endswith(".") and "imported lazily" not in text
    for command in ("validate", "rules", "explain", "schema", "dry-run", "inspect", "tui", "diff"):
        assert f"    {command} " in text
    assert "Exit status" in text


def test_text_output_shows_the_line_and_marker(run_cli):
    rc, out, _ = run_cli("validate", BROKEN, env={"NO_COLOR": "1"})
    assert rc == 1
    assert "broken.toml:17:1: OPT102 [error] unknown key `weight_decay_rat`" in out
    assert "  17 | weight_decay_rat = 0.01" in out
    assert "^^^^^^^^^^^^^^^^" in out and "= hint: did you mean `weight_decay`?" in out
    assert "\x1b[" not in out


def test_json_output_is_stable(run_cli):
    rc, out, _ = run_cli("validate", "--format", "json", BROKEN)
    data = json.loads(out)
    assert rc == 1 and data
    for d in data:
        assert list(d) == ["path", "line", "column", "end_line", "end_column", "severity", "code", "message", "hint"]
    codes = {d["code"] for d in data}
    assert {"OPT201", "OPT102", "OPT105", "OPT208", "OPT111"} <= codes


def test_github_annotations(run_cli):
    _, out, _ = run_cli("validate", "--format", "github", BROKEN)
    lines = out.strip().splitlines()
    assert lines and all(line.startswith(("::error ", "::warning ", "::notice ")) for line in lines)
    assert any("line=17,col=1" in line and "title=OPT102" in line for line in lines)


def test_sarif_2_1_0(run_cli):
    _, out, _ = run_cli("validate", "--format", "sarif", BROKEN)
    doc = json.loads(out)
    assert doc["version"] == "2.1.0"
    run = doc["runs"][0]
    rule_ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
    for res in run["results"]:
        assert rule_ids[res["ruleIndex"]] == res["ruleId"]
        region = res["locations"][0]["physicalLocation"]["region"]
        assert region["startLine"] >= 1 and region["startColumn"] >= 1
        assert res["level"] in ("error", "warning", "note")


def test_ignore_option(run_cli):
    rc, out, _ = run_cli("validate", "--format", "json", "--ignore", "OPT201,OPT102", "--ignore", "OPT105", BROKEN)
    codes = {d["code"] for d in json.loads(out)}
    assert not codes & {"OPT201", "OPT102", "OPT105"} and rc == 1


def test_rules_and_explain(run_cli):
    rc, out, _ = run_cli("rules")
    assert rc == 0 and "OPT201" in out and "OPT504" in out
    rc, out, _ = run_cli("explain", "opt201")
    assert rc == 0 and "Why it matters" in out and "relative_step" in out
    rc, _, err = run_cli("explain", "OPT999")
    assert rc == 2 and "unknown rule code" in err


def test_schema_command(run_cli):
    rc, out, _ = run_cli("schema", "scorn")
    assert rc == 0 and json.loads(out)["title"] == "SCORN"
    rc, out, _ = run_cli("schema")
    assert "definitions" in json.loads(out)
    rc, out, _ = run_cli("schema", "--list")
    assert "Prodigy" in out.split()
    assert run_cli("schema", "nosuch")[0] == 2


def test_validate_imports_no_torch_textual_or_safetensors():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "optinspect", "validate", BROKEN],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "optinspect" in imported and "jsonschema" in imported
    assert not imported & {"torch", "textual", "safetensors", "numpy"}, imported & {"torch", "textual", "safetensors"}


def test_tui_paints_before_torch_is_imported():
    """`optinspect tui` paints its first frame before the loading worker imports torch (~1 s): nothing the
    app imports at start may pull torch in (the columns once did, through the report module)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = ("import sys; from optinspect.cli import build_parser; from optinspect.tui.app import make_app; "
            "print(sorted(m for m in ('torch', 'safetensors', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_python_dash_m_entry_point():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "optinspect", "--version"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("optinspect ")


@pytest.mark.parametrize("blob,rc,code", [(b"\x00\x01\x02", 2, "OPT002"), (b"[optimizer\n", 1, "OPT001"),
                                          (b"\xef\xbb\xbf", 1, "OPT003"), (b"a = 'unterminated\n", 1, "OPT001")])
def test_bad_input_gives_its_code_and_no_traceback(tmp_path, blob, rc, code):
    """In a child process: an exception in-process would propagate to pytest, never print."""
    p = tmp_path / "x.toml"
    p.write_bytes(blob)
    proc = _cli("validate", str(p))
    assert proc.returncode == rc and f": {code} [error]" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_tui_command_checks_its_input_before_starting(run_cli, tmp_path):
    rc, _, err = run_cli("tui", str(tmp_path / "missing.pt"))
    assert rc == 2 and "no such file" in err


def test_rule_catalogue_shows_toml_brackets_literally(run_cli):
    rc, out, _ = run_cli("rules", env={"NO_COLOR": "1", "COLUMNS": "200"})
    assert rc == 0 and "No [optimizer] table" in out and "[[optimizer]]" in out


def test_every_code_has_an_explanation(run_cli):
    from optinspect.config import rules  # noqa: F401
    from optinspect.config.registry import RULES

    for code in RULES:
        rc, out, _ = run_cli("explain", code, env={"NO_COLOR": "1"})
        assert rc == 0 and code in out


def _cli(*args: str, timeout: float = 60, code_before: str = "") -> subprocess.CompletedProcess:
    """The CLI in a child process with its stdio on pipes (as in a script or CI), so that a hang, a traceback or
    escape codes would show."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["PYTHONPATH"] = str(ROOT)
    code = f"{code_before}\nimport sys\nfrom optinspect.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL, cwd=ROOT)


def test_unknown_option_shows_the_commands_usage(run_cli):
    rc, _, err = run_cli("validate", "--frob", GOOD)
    assert rc == 2 and "usage: optinspect validate" in err and "unrecognized arguments: --frob" in err


@pytest.mark.parametrize("args,needle", [
    (("--ignore", "OPT999"), "unknown rule code OPT999"),
    (("--ignore", "OPT201,opt31"), "unknown rule code OPT31 (did you mean OPT301"),
    (("--world-size", "0"), "--world-size: must be at least 1, got 0"),
    (("--world-size", "-2"), "must be at least 1"),
])
def test_validate_options_are_checked(run_cli, args, needle):
    rc, out, err = run_cli("validate", *args, GOOD)
    assert rc == 2 and needle in err and "no problems found" not in out


def test_validate_walks_a_folder_for_toml_files(run_cli, tmp_path):
    (tmp_path / "configs" / "lora").mkdir(parents=True)
    (tmp_path / "configs" / "lora" / "bad.toml").write_text((EXAMPLES / "broken.toml").read_text())
    (tmp_path / "configs" / "good.toml").write_text((EXAMPLES / "chroma.toml").read_text())
    (tmp_path / "configs" / "notes.txt").write_text("[optimizer]\ntype = 'nosuch'\n")
    for skipped in (".git", ".venv", "node_modules"):
        (tmp_path / "configs" / skipped).mkdir()
        (tmp_path / "configs" / skipped / "x.toml").write_text("[optimizer]\ntype = 'nosuch'\n")
    rc, out, _ = run_cli("validate", "--format", "json", str(tmp_path / "configs"))
    paths = {d["path"] for d in json.loads(out)}
    assert rc == 1 and paths == {str(tmp_path / "configs" / "lora" / "bad.toml")}
    rc, out, _ = run_cli("validate", str(tmp_path / "configs"), env={"NO_COLOR": "1"})
    assert f"no problems found in 1 file: {tmp_path / 'configs' / 'good.toml'}" in out
    (tmp_path / "empty").mkdir()
    rc, out, _ = run_cli("validate", str(tmp_path / "empty"), env={"NO_COLOR": "1"})
    assert rc == 2 and "a folder without any .toml file" in out


def test_clean_files_are_named_beside_the_findings(run_cli):
    rc, out, _ = run_cli("validate", GOOD, BROKEN, env={"NO_COLOR": "1"})
    assert rc == 1 and f"no problems found in 1 file: {GOOD}" in out


def test_output_says_which_trainer_the_table_was_judged_as(run_cli, tmp_path):
    """The profile decides what is an error (beta2_half_life, chroma-only types): the output names it."""
    both = tmp_path / "both.toml"
    both.write_text("[optimizer]\ntype = 'adamw'\nlr = 1e-4\nbetas = [0.9, 0.99]\nbeta2_half_life = 1000.0\n")
    rc, out, _ = run_cli("validate", str(both))
    assert rc == 0 and "OPT117 [warning]" in out and out.rstrip().endswith("judged as either trainer (upstream "
                                                                             "diffusion-pipe or diffusion-chroma; "
                                                                             "--trainer picks one)")
    rc, out, _ = run_cli("validate", "--trainer", "chroma", str(both))
    assert rc == 1 and "OPT117 [error]" in out and out.rstrip().endswith("judged as diffusion-chroma (--trainer)")
    rc, out, _ = run_cli("validate", "--trainer", "upstream", str(both))
    assert rc == 0 and "OPT117" not in out
    rc, out, _ = run_cli("validate", "--trainer", "upstream", GOOD)  # scorn is a chroma type: upstream fails
    assert rc == 1 and "OPT101" in out and "diffusion-chroma, not of upstream diffusion-pipe" in out
    rc, out, _ = run_cli("validate", GOOD)
    assert rc == 0 and "judged as diffusion-chroma (type 'scorn' is a built-in type of diffusion-chroma only)" in out


def test_only_regular_files_are_read(tmp_path):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    (tmp_path / "zero.toml").symlink_to("/dev/zero")
    proc = _cli("validate", str(fifo), str(tmp_path / "zero.toml"), timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "not a regular file (a FIFO)" in proc.stdout and "not a regular file (a character device)" in proc.stdout


def test_piped_rule_catalogue_keeps_each_rule_on_one_line():
    proc = _cli("rules")
    assert proc.returncode == 0
    row = next(line for line in proc.stdout.splitlines() if line.startswith("OPT001"))
    assert row.endswith("The file is not valid TOML (syntax error or duplicate key).")


@pytest.mark.parametrize("args,extra", [(("dry-run", GOOD), "torch"), (("inspect", "x.pt"), "torch"),
                                        (("diff", "a.pt", "b.pt"), "torch"), (("tui", GOOD), "tui")])
def test_heavy_commands_without_their_dependencies_say_what_to_install(args, extra):
    proc = _cli(*args, code_before="import sys\nsys.modules['torch'] = sys.modules['textual'] = None")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"pip install 'optinspect[{extra}]'" in proc.stderr and proc.stdout == ""


def test_tui_refuses_to_draw_into_a_pipe():
    proc = _cli("tui", GOOD, timeout=30)
    assert proc.returncode == 2 and "needs a terminal" in proc.stderr
    assert proc.stdout == ""


def test_the_program_tunes_the_collector_and_a_caller_keeps_its_own(monkeypatch, capsys):
    """Run as the program (argv from sys.argv), optinspect owns the process and makes the cyclic collector run
    rarely (it tripled the load time of a 100k-tensor state); called with arguments, from a caller's process
    (tests, a script), it leaves the caller's collector as it was."""
    import gc

    from optinspect.cli import main

    before = gc.get_threshold()
    try:
        main(["--version"])
        assert gc.get_threshold() == before
        monkeypatch.setattr("sys.argv", ["optinspect", "--version"])
        main()
        assert gc.get_threshold()[0] >= 100_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    capsys.readouterr()

