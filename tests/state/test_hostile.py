"""Hostile and broken state files: each ends quickly with exit 2 and one clear line (never a traceback, never
memory or time unbounded by what the file really holds); honest but unusual files still read correctly."""

import faulthandler
import json
import os
import resource

import pytest
import torch

from . import crafted as C

F32 = 4


def _stepped(opt_class=torch.optim.AdamW, n: int = 4, **kw) -> dict:
    """The state_dict of a one-parameter optimizer after one step: the honest file the crafted ones start from."""
    p = torch.nn.Parameter(torch.ones(n))
    opt = opt_class([p], **kw)
    p.grad = torch.ones(n)
    opt.step()
    return opt.state_dict()


@pytest.fixture(autouse=True)
def _bounded():
    """A case that hangs kills the run with a traceback instead of stalling the suite; memory growth is checked."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    faulthandler.dump_traceback_later(60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 512, f"peak memory grew by {grown_mib:.0f} MiB"


def _refused(run_cli, path, *needles, command=("inspect",)):
    rc, out, err = run_cli(*command, str(path))
    assert rc == 2, (rc, out[-500:], err[-500:])
    line = err.strip()
    assert "\n" not in line and line.startswith("optinspect: error:") and "unexpected" not in line, line
    for n in needles:
        assert n in line, line
    return line


@pytest.mark.parametrize("shape,stride,offset,numel,needle", [
    ((10**6, 10**6), (0, 0), 0, 1, "overlapping view"),  # 4 bytes read as 10^12 elements
    ((10**12,), (1,), 0, 10**12, "the file holds"),  # a storage the file does not have
    ((8, 8), (8, 1), 10, 64, "reaches element"),  # past the storage's end
    ((8, -8), (8, 1), 0, 64, "not a list of non-negative integers"),
    ((8, 8), (-8, 1), 0, 64, "not a list of non-negative integers"),
    ((8, 8.5), (8, 1), 0, 64, "not a list of non-negative integers"),
    ((8, 8), (8,), 0, 64, "2 dimensions but 1 strides"),
    ((4,), (1,), -1, 64, "reaches element"),
])
def test_tensor_extents_are_checked_before_anything_is_read(run_cli, tmp_path, shape, stride, offset, numel, needle):
    st = C._Storage("0", numel)
    C.torch_zip(tmp_path / "s.pt", C.state_with(C._Tensor(st, offset, shape, stride)), {"0": bytes(64 * F32)})
    _refused(run_cli, tmp_path / "s.pt", needle)


class _Reference:
    """A tensor's storage reference (torch.save's persistent id) with the fields given."""

    def __init__(self, *fields) -> None:
        self.fields = fields


class _ReferencePickler(C._Pickler):
    def persistent_id(self, obj):
        return obj.fields if isinstance(obj, _Reference) else super().persistent_id(obj)


@pytest.mark.parametrize("fields,needle", [
    (("storage", torch.FloatStorage, "0", "cpu", -5), "storage 0 claims -5 elements"),
    (("storage", torch.FloatStorage, "0", "cpu", 2**70), "claims 1180591620717411303424 elements"),
    (("storage", torch.FloatStorage, "0", "cpu", "64"), "claims 64 elements"),
    (("storage", torch.FloatStorage, "0", "cpu"), "a storage reference of 4 fields"),
    (("storage", torch.FloatStorage, "9", "cpu", 64), "a tensor's data (9) is missing"),
    (("storage", torch.FloatStorage, 0, "cpu", 64), None),  # a key that is not a string still finds its data
])
def test_storage_references_are_checked(run_cli, tmp_path, monkeypatch, fields, needle):
    monkeypatch.setattr(C, "_Pickler", _ReferencePickler)
    C.torch_zip(tmp_path / "s.pt", C.state_with(C._Tensor(_Reference(*fields), 0, (8, 8), (8, 1))),
                {"0": bytes(64 * F32)})
    if needle is None:
        rc, out, err = run_cli("inspect", str(tmp_path / "s.pt"))
        assert rc == 0 and "0/0" in out, (rc, err)  # read, its one parameter listed
    else:
        _refused(run_cli, tmp_path / "s.pt", needle)


def test_non_contiguous_tensors_are_read_piecewise_and_right(run_cli, tmp_path, monkeypatch):
    """A transposed and a strided tensor: statistics equal those of the same values stored contiguously, read
    in chunks far smaller than a row."""
    from optinspect.state import stats

    base = torch.arange(6 * 40, dtype=torch.float32).reshape(6, 40) - 100
    st = C._Storage("0", base.numel())
    transposed = C._Tensor(st, 0, (40, 6), (1, 40))
    strided = C._Tensor(st, 1, (6, 20), (40, 2))
    C.torch_zip(tmp_path / "s.pt", {"state": {0: {"step": 1, "exp_avg": transposed, "exp_avg_sq": strided}},
                                    "param_groups": [{"params": [0]}]}, {"0": base.numpy().tobytes()})
    monkeypatch.setattr(stats, "CHUNK", 7)
    rc, out, _ = run_cli("inspect", str(tmp_path / "s.pt"), "--json")
    assert rc == 0
    got = {t["key"]: t for t in json.loads(out)["params"][0]["tensors"]}
    for key, want in (("exp_avg", base.t()), ("exp_avg_sq", base[:, 1::2])):
        assert got[key]["shape"] == list(want.shape)
        assert got[key]["min"] == float(want.min()) and got[key]["max"] == float(want.max())
        assert abs(got[key]["mean"] - float(want.double().mean())) < 1e-9 * float(want.abs().max())
        assert abs(got[key]["l2"] - float(want.double().norm())) < 1e-6 * float(want.double().norm())


def test_compressed_members_are_refused_not_expanded(run_cli, tmp_path):
    st = C._Storage("0", 2**22)
    C.torch_zip(tmp_path / "s.pt", C.state_with(C._Tensor(st, 0, (2**22,), (1,))), {"0": bytes(2**22 * F32)},
                compress=True)
    assert os.path.getsize(tmp_path / "s.pt") < 2**20  # 16 MiB of zeros deflate to a few KB
    _refused(run_cli, tmp_path / "s.pt", "compressed")


@pytest.mark.parametrize("command", [("inspect", "--json"), ("inspect",), ("diff", "SELF")])
def test_billion_laughs_group_value_is_summarised(run_cli, tmp_path, command):
    sd = _stepped()
    sd["param_groups"][0]["laughs"] = C.laughs()
    sd["param_groups"][0]["huge"] = 10**5000
    torch.save(sd, tmp_path / "s.pt")
    assert os.path.getsize(tmp_path / "s.pt") < 8192
    args = [a if a != "SELF" else str(tmp_path / "s.pt") for a in command]
    rc, out, err = run_cli(*args[:1], str(tmp_path / "s.pt"), *args[1:])
    assert rc == 0, err
    assert len(out) < 200_000
    if "--json" in command:
        group = json.loads(out)["groups"][0]
        assert group["huge"] == "<16610-bit integer>" and "…" in json.dumps(group["laughs"], ensure_ascii=False)


@pytest.mark.parametrize("obj,needle", [
    ([1, 2, 3], "holds a list"),
    ({"state": [], "param_groups": []}, "`state` is a list"),
    ({"state": {}, "param_groups": ["lr"]}, "param_groups[0] is a str"),
    ({"state": {}, "param_groups": [{"params": 3}]}, "['params'] is a int"),
    ({0: {"state": {}, "param_groups": [{"lr": 1.0}]}}, None),  # gradient release without params: reads, empty
])
def test_malformed_layouts_are_named(run_cli, tmp_path, obj, needle):
    torch.save(obj, tmp_path / "s.pt")
    if needle is None:
        rc, _, err = run_cli("inspect", str(tmp_path / "s.pt"))
        assert rc == 0, err
    else:
        _refused(run_cli, tmp_path / "s.pt", needle)


def test_special_files_and_folders_are_refused_by_name(run_cli, tmp_path):
    os.mkfifo(tmp_path / "fifo.pt")
    _refused(run_cli, tmp_path / "fifo.pt", "a FIFO")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.mkfifo(run_dir / "optimizer.pt")
    _refused(run_cli, run_dir, "a FIFO")
    (tmp_path / "dev.pt").symlink_to("/dev/zero")
    _refused(run_cli, tmp_path / "dev.pt", "a device")
    (tmp_path / "dev.safetensors").symlink_to("/dev/zero")
    _refused(run_cli, tmp_path / "dev.safetensors", "a device")


def test_deepspeed_latest_is_read_capped_and_never_loops(run_cli, tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "latest").write_text(".")
    _refused(run_cli, ds, "no optimizer file")
    with open(ds / "latest", "wb") as fh:  # a sparse 8 GB `latest`: only its first bytes are read
        fh.truncate(8 << 30)
    _refused(run_cli, ds, "no optimizer file")
    (ds / "latest").unlink()
    os.mkfifo(ds / "latest")
    _refused(run_cli, ds, "a FIFO")


@pytest.mark.parametrize("header,needle", [
    ({"x": {"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}}, "not non-negative integers"),
    ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4.0]}}, "not non-negative integers"),
    ({"x": {"dtype": "F32", "shape": [10**30], "data_offsets": [0, 4]}}, "not non-negative integers"),
    ({"x": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, "unknown dtype"),
    ({"__metadata__": {"param_groups": [1, 2]}, "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
     "object of strings"),
    ({"x": {"dtype": "F32", "shape": [1]}}, "malformed entry"),
])
def test_safetensors_headers_of_the_wrong_types_are_named(run_cli, tmp_path, header, needle):
    (tmp_path / "s.safetensors").write_bytes(C.safetensors_bytes(header, bytes(4)))
    _refused(run_cli, tmp_path / "s.safetensors", needle)


def test_safetensors_headers_with_huge_numbers_or_deep_nesting(run_cli, tmp_path):
    raw = b'{"x": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}'
    (tmp_path / "big.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(4))
    _refused(run_cli, tmp_path / "big.safetensors", "too large")
    raw = b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    (tmp_path / "deep.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw)
    _refused(run_cli, tmp_path / "deep.safetensors", "nests too deep")


def test_truncated_zip_directories_are_named(run_cli, tmp_path):
    torch.save(_stepped(n=64), tmp_path / "s.pt")
    data = (tmp_path / "s.pt").read_bytes()
    for cut in (len(data) - 10, len(data) - 30, len(data) // 2):
        (tmp_path / "t.pt").write_bytes(data[:cut])
        _refused(run_cli, tmp_path / "t.pt")


def test_diff_streams_instead_of_loading_tensors_whole(run_cli, tmp_path, monkeypatch):
    """diff reads state tensors chunk by chunk: reading a large one whole is an error here, and the figures equal
    the ones computed directly."""
    from optinspect.state.mapped import MappedTensor

    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(1 << 18))
    opt = torch.optim.AdamW([p], lr=1e-2)
    states = []
    for i in range(2):
        p.grad = torch.randn(1 << 18)
        opt.step()
        torch.save(opt.state_dict(), tmp_path / f"s{i}.pt")
        states.append({k: v.clone() for k, v in opt.state[p].items()})
    real_load = MappedTensor.load

    def load(self):
        assert self.numel <= 1 << 16, f"read whole: {self.numel} elements"
        return real_load(self)

    monkeypatch.setattr(MappedTensor, "load", load)
    rc, out, err = run_cli("diff", str(tmp_path / "s0.pt"), str(tmp_path / "s1.pt"), "--json")
    assert rc == 0, err
    drift = {d["key"]: d for d in json.loads(out)["params"][0]["drifts"]}
    for key in ("exp_avg", "exp_avg_sq"):
        d = (states[1][key] - states[0][key]).double()  # the difference in the state's own precision
        assert abs(drift[key]["rel"] - float(d.norm() / states[0][key].double().norm())) < 1e-12
        assert drift[key]["max_abs"] == float((states[1][key] - states[0][key]).abs().max())


def test_a_file_truncated_while_it_is_read_is_a_clean_error(tmp_path):
    """A trainer re-saving in place shrinks the file under us: touching the lost pages would be SIGBUS (the
    process killed without a word); it must be a clean error instead."""
    import subprocess
    import sys

    from ..conftest import ROOT

    code = f"""
import os, sys, torch
sys.path.insert(0, {str(ROOT)!r})
from optinspect.state.load import load_state
from optinspect.state.analyse import build_report
from optinspect.state.mapped import CorruptData
p = torch.nn.Parameter(torch.randn(1 << 21)); opt = torch.optim.AdamW([p]); p.grad = torch.randn(1 << 21); opt.step()
torch.save(opt.state_dict(), sys.argv[1])
ls = load_state(sys.argv[1])
os.truncate(sys.argv[1], os.path.getsize(sys.argv[1]) // 3)
try:
    build_report(ls)
except CorruptData as e:
    print("clean:", e)
"""
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.pt")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])  # -7 would be SIGBUS
    assert proc.stdout.startswith("clean:") and "shorter than its tensors need" in proc.stdout


def test_error_lines_escape_what_they_quote_from_the_file(run_cli, tmp_path):
    """A refused global's name is quoted in the error: a DEL or ESC in it must not reach the terminal raw
    (found by tests/fuzz_inputs.py)."""
    torch.save(_stepped(torch.optim.SGD, lr=1.0, momentum=0.9), tmp_path / "s.pt",
               _use_new_zipfile_serialization=False)
    data = (tmp_path / "s.pt").read_bytes().replace(b"torch\nFloatStorage", b"\x1borch\nFloatStorage")
    (tmp_path / "s.pt").write_bytes(data)
    line = _refused(run_cli, tmp_path / "s.pt", "\\x1borch.FloatStorage")
    assert "\x1b" not in line


def _legacy(tmp_path) -> bytes:
    torch.save(_stepped(torch.optim.SGD, lr=1.0, momentum=0.9), tmp_path / "s.pt",
               _use_new_zipfile_serialization=False)
    return (tmp_path / "s.pt").read_bytes()


def test_legacy_pickles_that_upset_torch_are_one_line(run_cli, tmp_path):
    """Found by the fuzz harness: torch warned on stderr about an odd pickle protocol (two lines), and raised
    AssertionError on a storage key that is not in the file (the CLI's last resort)."""
    data = _legacy(tmp_path)
    # legacy torch.save writes four pickles (magic number, protocol version, system info, the object): the
    # object's PROTO 2 is the fourth
    proto = [i for i in range(len(data) - 1) if data[i:i + 2] == b"\x80\x02"][3]
    (tmp_path / "proto.pt").write_bytes(data[:proto + 1] + b"\xae" + data[proto + 2:])
    rc, _, err = run_cli("inspect", str(tmp_path / "proto.pt"))  # readable: torch only warns, and not to us
    assert rc == 0 and err == ""
    # the fifth pickle lists the storage keys: `]q\x00X` + 4-byte length + the key (digits)
    at = data.rindex(b"]q\x00X") + 4
    n = int.from_bytes(data[at:at + 4], "little")
    key = data[at + 4:at + 4 + n]
    bad = data[:at + 4] + key[:-1] + (b"7" if key[-1:] != b"7" else b"3") + data[at + 4 + n:]
    (tmp_path / "key.pt").write_bytes(bad)
    _refused(run_cli, tmp_path / "key.pt", "corrupt")


def test_a_group_value_nested_100k_deep_is_summarised(run_cli, tmp_path):
    """Python's pickler cannot write it, but the opcodes can: 100k EMPTY_LISTs then 100k APPENDs."""
    depth = 100_000
    st = C._Storage("0", 4)
    C.torch_zip(tmp_path / "s.pt", C.state_with(C._Tensor(st, 0, (4,), (1,)), deep="DEEP-PLACEHOLDER"),
                {"0": bytes(16)})
    import zipfile

    with zipfile.ZipFile(tmp_path / "s.pt") as z:
        members = {n: z.read(n) for n in z.namelist()}
    pkl = members["archive/data.pkl"]
    placeholder = b"X\x10\x00\x00\x00DEEP-PLACEHOLDER"
    assert placeholder in pkl
    members["archive/data.pkl"] = pkl.replace(placeholder, b"]" * depth + b"a" * (depth - 1))
    with zipfile.ZipFile(tmp_path / "s.pt", "w", compression=zipfile.ZIP_STORED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    for args in (("inspect", "--json"), ("inspect",), ("diff",)):
        extra = [str(tmp_path / "s.pt")] if args[0] == "diff" else list(args[1:])
        rc, out, err = run_cli(args[0], str(tmp_path / "s.pt"), *extra)
        assert rc == 0, err[-500:]
        if "--json" in args:
            value = json.loads(out)["groups"][0]["deep"]
            depth_seen = 0
            while isinstance(value, list) and value:
                value, depth_seen = value[0], depth_seen + 1
            assert value == "…" and depth_seen < 100


def test_a_zip_directory_with_a_name_that_is_not_utf8_is_named(run_cli, tmp_path):
    """Found by the fuzz harness: zipfile raised UnicodeDecodeError on a mangled member name."""
    torch.save(_stepped(), tmp_path / "s.pt")
    data = bytearray((tmp_path / "s.pt").read_bytes())
    at = data.rindex(b"s/data.pkl")  # data.pkl's name in the central directory (the last of its two copies)
    data[at + 2] = 0xFF  # "data.pkl" mangled: the fast reader gives up, and zipfile cannot decode the name
    (tmp_path / "s.pt").write_bytes(bytes(data))
    for command in ("inspect", "diff"):
        extra = [str(tmp_path / "s.pt")] if command == "diff" else []
        rc, _, err = run_cli(command, str(tmp_path / "s.pt"), *extra)
        assert rc == 2 and "unexpected" not in err and err.count("\n") == 1, err


def test_more_tensors_than_the_bound_are_refused_before_they_are_read(run_cli, tmp_path):
    """A file of a million one-element tensors is 88 MB and took minutes and gigabytes: past --max-tensors
    (default 300,000) it is one line and exit 2, counted before any tensor object is made."""
    from safetensors.torch import save_file

    save_file({f"state.l{i}.exp_avg": torch.tensor([float(i)]) for i in range(120)}, str(tmp_path / "s.safetensors"))
    sd = {"state": {i: {"exp_avg": torch.ones(1)} for i in range(120)},
          "param_groups": [{"lr": 1.0, "params": list(range(120))}]}
    torch.save(sd, tmp_path / "s.pt")
    for name, count in (("s.safetensors", "120"), ("s.pt", "more than 100")):
        rc, _, err = run_cli("inspect", str(tmp_path / name), "--max-tensors", "100")
        assert rc == 2 and f"holds {count} tensors, past the limit of 100" in err and "--max-tensors" in err
        assert run_cli("inspect", str(tmp_path / name), "--max-tensors", "120", "--json")[0] == 0
    # diff reads two files: the bound holds for both together
    rc, _, err = run_cli("diff", str(tmp_path / "s.pt"), str(tmp_path / "s.pt"), "--max-tensors", "200")
    assert rc == 2 and "past the limit of 100" in err
    assert run_cli("diff", str(tmp_path / "s.pt"), str(tmp_path / "s.pt"), "--max-tensors", "240")[0] == 0
