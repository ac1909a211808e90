"""Strings that come from a file never reach the terminal raw (escape sequences, bells, bidi overrides) nor as
rich markup, and secret values never print, in every output format."""

import asyncio
import json

import pytest
import torch

from optinspect.render import term

ESC = "\x1b[2J\x1b[31m"  # clear the screen, then red
HOSTILE = f"evil{ESC}\x07\u202e[bold red]FAKE-OK[/]"


def test_term_escapes_control_and_bidi_characters_and_keeps_the_rest():
    assert term("plain [text] ü 1e-4") == "plain [text] ü 1e-4"
    assert term("a\x1b[31mb\x07c\rd\ne\u202ef") == "a\\x1b[31mb\\x07c\\x0dd\\x0ae\\u202ef"
    assert term("tab\there\nline", one_line=False) == "tab\there\nline"
    assert term("\x9b31m") == "\\x9b31m"  # the one-byte CSI of C1


TOML_ESC = "\\u001b[2J\\u001b[31m"  # what a config can hold: the parser turns it into real ESC characters


@pytest.mark.parametrize("fmt", ["text", "github"])
@pytest.mark.parametrize("config,shown_in", [
    # parses: the values (with real ESC characters) reach the messages of every format
    (f'[optimizer]\ntype = "scorn{TOML_ESC}"\n"k{TOML_ESC}" = 1\nlr = 1e-4\n', ("text", "github")),
    # raw bytes: a syntax error, whose line only the text format echoes
    (f"[optimizer]\ntype = 'scorn'\nlr = 1e-4 # {ESC}\n", ("text",)),
])
def test_validate_output_escapes_what_the_config_holds(run_cli, tmp_path, fmt, config, shown_in):
    cfg = tmp_path / "c.toml"
    cfg.write_text(config)
    rc, out, err = run_cli("validate", "--format", fmt, str(cfg), env={"NO_COLOR": "1"})
    assert rc == 1 and out
    assert "\x1b" not in out + err
    assert ("\\x1b[2J" in out) is (fmt in shown_in)


def _hostile_state(path):
    p = torch.nn.Parameter(torch.randn(4, 4))
    opt = torch.optim.AdamW([p], lr=1e-3)
    p.grad = torch.randn(4, 4)
    opt.step()
    sd = opt.state_dict()
    sd["param_groups"][0][f"note{ESC}"] = HOSTILE
    sd["param_groups"][0]["param_names"] = [HOSTILE]
    torch.save(sd, path)


def test_inspect_and_diff_escape_names_and_group_values(run_cli, tmp_path):
    _hostile_state(tmp_path / "a.pt")
    rc, out, err = run_cli("inspect", str(tmp_path / "a.pt"), env={"NO_COLOR": "1"})
    assert rc == 0 and "\x1b" not in out + err and "\x07" not in out and "\u202e" not in out
    assert "evil\\x1b[2J" in out and "[bold red]FAKE-OK[/]" in out  # shown literally
    rc, out, err = run_cli("diff", str(tmp_path / "a.pt"), str(tmp_path / "a.pt"), env={"NO_COLOR": "1"})
    assert rc == 0 and "\x1b" not in out + err and "evil\\x1b[2J" in out
    rc, out, _ = run_cli("inspect", str(tmp_path / "a.pt"), "--json")
    assert json.loads(out)["params"][0]["name"] == HOSTILE  # JSON keeps the true string (escaped by JSON itself)


def test_tui_shows_hostile_names_literally(tmp_path, monkeypatch):
    from optinspect.tui.app import make_app
    from optinspect.tui.widgets.table import ParamTable

    from ..tui.conftest import screen_text

    monkeypatch.chdir(tmp_path)
    _hostile_state("a.pt")

    async def run():
        app = make_app("a.pt")
        async with app.run_test(size=(160, 30)) as pilot:
            await app.workers.wait_for_complete()
            await pilot.pause()
            table = app.query_one(ParamTable)
            row = "".join(seg.text for seg in table.render_line(1))
            assert "evil\\x1b[2J" in row and "\x1b" not in row
            await pilot.press("enter")
            await pilot.pause()
            text = screen_text(app)
            assert "[bold red]FAKE-OK[/]" in text and "\x1b" not in text
            await pilot.press("q")

    asyncio.run(run())


SECRETS = ("s3cr3t-quoted-key", "s3cr3t-inline", "s3cr3t-nested", "s3cr3t-top", "s3cr3t-array", "s3cr3t-opt")
SECRET_CONFIG = f"""\
"my token" = "{SECRETS[0]}"
logging = {{ token = "{SECRETS[1]}", level = "info" }}
creds = {{ hf_token = "{SECRETS[2]}" }}
wandb_api_key = "{SECRETS[3]}"

[[accounts]]
password = "{SECRETS[4]}"

[optimizer]
type = 'scorn'
lr = "{SECRETS[5]}"
auth = {{ token = "{SECRETS[5]}" }}
"api key" = 3
"""


@pytest.mark.parametrize("fmt", ["text", "json", "github", "sarif"])
def test_secret_values_never_print(run_cli, tmp_path, fmt):
    cfg = tmp_path / "c.toml"
    cfg.write_text(SECRET_CONFIG)
    rc, out, err = run_cli("validate", "--format", fmt, str(cfg), env={"NO_COLOR": "1"})
    assert rc == 1 and "OPT107" in out  # lr is a string: reported, its value not shown
    assert not [s for s in SECRETS if s in out + err]


def test_echoed_lines_are_masked_even_when_the_file_does_not_parse(run_cli, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'creds = {{ hf_token = "{SECRETS[2]}" }} oops\n')
    rc, out, _ = run_cli("validate", str(cfg), env={"NO_COLOR": "1"})
    assert rc == 1 and "OPT001" in out and SECRETS[2] not in out and "hf_token = '***'" in out
