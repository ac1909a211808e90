"""The fuzz harness (tests/fuzz_inputs.py) run on a fixed budget: mutated real files never hang, blow memory,
print a traceback or a raw control character, or end in the CLI's last-resort line. Longer budgets:
`python tests/fuzz_inputs.py --cases 2000 --seed N`."""

import pytest

from . import fuzz_inputs as F


@pytest.mark.slow
def test_mutated_inputs_end_cleanly_within_limits():
    outcomes = F.fuzz(cases=36, seed=2024, jobs=2)
    bad = [f"{o.case}: {o.problem} ({' '.join(o.command)})" for o in outcomes if o.problem]
    assert bad == []
    kinds = {o.case.split("#")[0] for o in outcomes}
    assert len(outcomes) == 36 and kinds == {"zip", "legacy", "st", "ds", "ds_latest", "chroma.toml", "broken.toml"}


@pytest.mark.parametrize("rc,seconds,rss,out,err,problem", [
    (None, 31.0, 100, "", "", "ran past"),
    (1, 1.0, 2048, "", "", "peak RSS"),
    (-11, 1.0, 100, "", "", "exit -11"),
    (1, 1.0, 100, "", "Traceback (most recent call last):\n", "traceback"),
    (2, 1.0, 100, "", "optinspect: error: unexpected KeyError: 3 (the input ...)\n", "last-resort"),
    (0, 1.0, 100, "name \x1b[31m\n", "", "raw control character"),
    (2, 1.0, 100, "", "optinspect: error: a\noptinspect: error: b\n", "more than one error line"),
    (2, 1.0, 100, "", "optinspect: error: x.pt: truncated or corrupt torch file\n", ""),
    (2, 1.0, 100, "", "optinspect: error: x.pt: truncated (unexpected EOF, expected 11 more bytes)\n", ""),
    (0, 1.0, 100, "a table\twith tabs\n", "", ""),
])
def test_the_judge_flags_what_it_must(rc, seconds, rss, out, err, problem):
    got = F.judge(rc, seconds, rss, out, err, json_out=False)
    assert (problem in got) if problem else got == ""


@pytest.mark.slow
def test_a_state_at_the_tensor_bound_ends_within_the_limits(tmp_path):
    """The costliest honest shape per byte: every tensor its own one-element parameter, as many as --max-tensors
    lets through (300,000). It must end within the harness's 30 s and 1 GiB; one more tensor is refused at once."""
    import json
    import struct

    from safetensors import safe_open

    from optinspect.state.limits import MAX_TENSORS

    path = tmp_path / "tiny.safetensors"  # written directly (safetensors' save_file takes 8 s for this many)
    header = json.dumps({f"state.l{i}.exp_avg": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
                         for i in range(MAX_TENSORS)}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + struct.pack(f"<{MAX_TENSORS}f", *range(MAX_TENSORS)))
    with safe_open(str(path), "pt") as f:  # a file the library itself reads
        assert len(f.keys()) == MAX_TENSORS and f.get_tensor("state.l7.exp_avg").item() == 7.0
    rc, seconds, rss, out, err = F.run_case(["inspect", str(path)])
    assert F.judge(rc, seconds, rss, out, err, json_out=False) == "" and rc == 0, (seconds, rss, err[-300:])
    assert f"{MAX_TENSORS:,} parameters" in out
    rc, seconds, rss, out, err = F.run_case(["inspect", str(path), "--max-tensors", str(MAX_TENSORS - 1)])
    assert rc == 2 and "past the limit" in err and seconds < 10, (seconds, err)
