"""The schemas: per type Draft 4 (what the validator runs), the editors' whole-config schema Draft-07 with one
if/then branch per type (taplo), in sync, and their defaults equal the constructors' defaults."""

import inspect
import json
import math
import shutil
import subprocess
import sys

import pytest
from jsonschema import Draft4Validator, Draft7Validator

from optinspect import specs
from optinspect.config import schemas

from ..conftest import EXAMPLES, ROOT

DRAFT6_PLUS = {"const", "if", "then", "else", "$defs", "contains", "propertyNames", "examples", "dependentRequired",
               "unevaluatedProperties", "prefixItems", "$anchor"}


def _walk(node, path=()):
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, path + (i,))


@pytest.mark.parametrize("name", schemas.available())
def test_schema_is_valid_draft4_without_newer_keywords(name):
    s = schemas.load(name)
    Draft4Validator.check_schema(s)
    for path, node in _walk(s):
        if "properties" in path[-1:]:
            continue
        used = DRAFT6_PLUS & set(node)
        assert not used, f"{name} {path}: {used}"
        for k in ("exclusiveMinimum", "exclusiveMaximum"):
            if k in node and path[-2:-1] != ("properties",):
                assert isinstance(node[k], bool), f"{name} {path}: Draft 4 wants a boolean {k}"


def test_editor_schema_is_draft7_with_one_branch_per_type():
    s = schemas.load("config")
    assert s["$schema"] == "http://json-schema.org/draft-07/schema#"
    Draft7Validator.check_schema(s)
    branches = s["definitions"]["optimizer"]["allOf"]
    assert [b["then"]["$ref"] for b in branches] == [f"#/definitions/{n}" for n in schemas.available()]
    for path, node in _walk(s):  # Draft 4's boolean bounds would silently mean nothing in Draft-07
        if "properties" not in path[-1:]:
            assert not isinstance(node.get("exclusiveMinimum", 0), bool), path
            assert not isinstance(node.get("exclusiveMaximum", 0), bool), path


@pytest.mark.parametrize("table,valid", [
    ({"type": "scorn", "lr": 1e-4}, True), ({"type": "SCORN", "betas": [0.9, 0.99]}, True),
    ({"type": "scorn", "lr": "1e-4"}, False), ({"type": "scorn", "weight_decay_rat": 1}, False),
    ({"type": "adafactor", "beta1": 1.0}, False), ({"type": "adafactor", "beta1": 0.9}, True),
    ({"type": "Prodigy", "lr": 1.0}, True), ({"type": "prodigy", "anything": 1}, True),  # no branch: validate says
    ({"type": "AdamW8bitKahan", "eps": 0.0}, True), ({"lr": 1e-4}, False),
])
def test_editor_schema_judges_tables_as_the_per_type_schema_does(table, valid):
    """The Draft-07 branch of each type accepts exactly what its Draft 4 schema accepts."""
    v = Draft7Validator(schemas.load("config"))
    assert v.is_valid({"optimizer": table}) is valid
    name = {"scorn": "scorn", "adafactor": "adafactor", "prodigy": "prodigy", "adamw8bitkahan": "adamw8bitkahan"}
    key = str(table.get("type", "")).lower()
    if key in name and (key != "prodigy" or table["type"] == "Prodigy"):
        assert Draft4Validator(schemas.load(name[key])).is_valid(table) is valid


def test_bundle_file_is_in_sync_with_the_per_type_schemas():
    on_disk = json.loads((ROOT / "schemas" / "config.schema.json").read_text())
    assert on_disk == schemas.bundle(), ("regenerate: python -c 'import json; from optinspect.config import schemas; "
                                         "print(json.dumps(schemas.bundle(), indent=2))' > schemas/config.schema.json")


@pytest.mark.parametrize("name", schemas.available())
def test_every_property_documented(name):
    for key, prop in schemas.load(name)["properties"].items():
        assert prop.get("description"), f"{name}.{key} has no description"
        assert "type" in prop or "enum" in prop or "pattern" in prop, f"{name}.{key} has no type"


BUNDLED = ["adafactor", "scorn", "remaster", "persona", "adamw8bitkahan", "prodigy"]


def _ctor_defaults(klass):
    sig = inspect.signature(klass.__init__)
    return {k: p.default for k, p in sig.parameters.items()
            if k not in ("self", "params") and p.kind is p.POSITIONAL_OR_KEYWORD}


def _same(a, b):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isinf(a):
        return a == b
    return a == b and type(a) is type(b) or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                             and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


@pytest.mark.parametrize("name", BUNDLED)
def test_schema_defaults_equal_constructor_defaults(name):
    from optinspect.build import class_for

    klass = class_for(name)
    ctor = _ctor_defaults(klass)
    schema_defaults = schemas.defaults(name)
    props = set(schemas.load(name)["properties"]) - {"type", "gradient_release", "beta2_half_life"}
    ours = set(specs.TYPES[name].our_options) if name in specs.TYPES else set()  # not the trainer's: no schema key
    assert props == set(ctor) - ours, f"schema keys {props ^ (set(ctor) - ours)} differ from the constructor"
    for key, value in ctor.items():
        if key in ours:
            continue
        assert key in schema_defaults, f"{name}.{key} has no default in the schema"
        assert _same(schema_defaults[key], value), f"{name}.{key}: schema {schema_defaults[key]!r} vs {value!r}"


def test_prodigy_schema_matches_pytorch_optimizer_signature():
    po = pytest.importorskip("pytorch_optimizer")
    ctor = _ctor_defaults(po.Prodigy)
    d = schemas.defaults("prodigy")
    for key, value in ctor.items():
        assert _same(d[key], value), key


@pytest.mark.parametrize("name,klass", [("adamw", "AdamW"), ("sgd", "SGD")])
def test_torch_schemas_match_torch(name, klass):
    import torch

    ctor = _ctor_defaults(getattr(torch.optim, klass))
    d = schemas.defaults(name)
    for key, value in ctor.items():
        if isinstance(value, (int, float, bool, tuple)) or value is None:
            assert key in d and _same(d[key], value), key


def test_readme_full_examples_use_only_schema_keys():
    import tomlkit

    for path in (EXAMPLES / "readme").glob("*.toml"):
        table = tomlkit.parse(path.read_text()).unwrap()["optimizer"]
        from optinspect.config.catalog import resolve_type

        props = schemas.load(resolve_type(table["type"]).schema)["properties"]
        assert set(table) <= set(props), path.name


def _taplo():
    exe = shutil.which("taplo") or str(ROOT / ".venv" / "bin" / "taplo")
    if not shutil.which(exe):
        candidate = shutil.which("taplo", path=str(__import__("pathlib").Path(sys.executable).parent))
        exe = candidate or ""
    return exe


@pytest.mark.slow
def test_taplo_reads_the_schema_and_agrees(tmp_path):
    exe = _taplo()
    if not exe:
        pytest.skip("taplo not installed (pip install taplo)")
    schema = (ROOT / "schemas" / "config.schema.json").as_uri()
    good = tmp_path / "good.toml"
    good.write_text(f"#:schema {schema}\nepochs = 1\n[optimizer]\ntype = 'scorn'\nlr = 1e-4\nbetas = [0.95, 0.9999]\n")
    bad = tmp_path / "bad.toml"
    bad.write_text(f"#:schema {schema}\n[optimizer]\ntype = 'scorn'\nbetas = [0.9, 0.99, 0.999]\nweight_decay_rat = 1\n")
    ok = subprocess.run([exe, "check", str(good)], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    ko = subprocess.run([exe, "check", str(bad)], capture_output=True, text=True, cwd=tmp_path)
    out = ko.stdout + ko.stderr
    assert ko.returncode != 0 and ("weight_decay_rat" in out or "schema validation failed" in out), out[-2000:]


def test_taplo_reports_each_mistake_of_broken_toml_at_its_own_key(tmp_path):
    """What a user sees in the editor: every mistake in examples/broken.toml on the line of its key."""
    exe = _taplo()
    if not exe:
        pytest.skip("taplo not installed (pip install taplo)")
    text = (EXAMPLES / "broken.toml").read_text()
    config = tmp_path / "broken.toml"
    config.write_text(f"#:schema {(ROOT / 'schemas' / 'config.schema.json').as_uri()}\n" + text)
    line_of = {key: 2 + next(i for i, line in enumerate(text.splitlines()) if line.startswith(key + " "))
               for key in ("beta1", "eps", "weight_decay_rat", "warmup_steps")}
    proc = subprocess.run([exe, "check", str(config)], capture_output=True, text=True, cwd=tmp_path,
                          env={"NO_COLOR": "1", "PATH": ""})
    assert proc.returncode != 0
    found: dict[int, list[str]] = {}
    message = None
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("error: "):
            message = line[len("error: "):]
        elif "\u250c\u2500" in line and message:  # taplo's location line: "┌─ path:line:col"
            found.setdefault(int(line.rsplit(":", 2)[-2]), []).append(message)
    assert any('"None" is not of type "number"' in m for m in found.get(line_of["beta1"], [])), found
    assert any("1e-30 is not of type \"array\"" in m for m in found.get(line_of["eps"], [])), found
    for key in ("weight_decay_rat", "warmup_steps"):
        assert any(f"'{key}'" in m for m in found.get(line_of[key], [])), (key, found)
    assert not any("anyOf" in m for ms in found.values() for m in ms)


@pytest.mark.parametrize("name", [n for n in schemas.available() if n != schemas.BUNDLE])
def test_schema_file_metadata_is_the_registrys(name):
    """Editors read `x-optinspect` from the file, optinspect from the registry: they must say the same."""
    from optinspect import specs

    assert name in specs.TYPES, f"schema {name} has no registry entry"
    assert schemas.load(name)["x-optinspect"] == specs.TYPES[name].schema_meta()
