"""`inspect --json` writes rows one at a time with histograms spliced in as text: what it writes must be what
json.dumps makes of the whole report (to_dict), whatever the names hold."""

import io
import json

import torch

from optinspect.render.state import write_json
from optinspect.state.analyse import build_report
from optinspect.state.load import load_state


def test_streamed_json_equals_the_whole_report_dumped(tmp_path):
    g = torch.Generator().manual_seed(0)
    wide = torch.logspace(-20, 20, 4096).view(64, 64)  # many exponents: dense histograms
    state = {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(64, 64, generator=g) * wide,
                 "exp_avg_sq": torch.rand(64, 64, generator=g) * wide},
             1: {"step": torch.tensor(3.0), "exp_avg": torch.tensor([0.5]), "exp_avg_sq": torch.tensor([0.25])},
             2: {"step": torch.tensor(3.0), "exp_avg": torch.tensor([float("nan"), 0.0, 1e-40, 3e38]),
                 "exp_avg_sq": torch.zeros(4)}}
    names = ['a "quoted" name', "\x01 control \u202e bidi", "hist"]  # names that look like what is spliced
    torch.save({"state": state, "param_groups": [{"lr": 1e-3, "params": [0, 1, 2], "param_names": names}]},
               tmp_path / "s.pt")
    report = build_report(load_state(str(tmp_path / "s.pt")))
    out = io.StringIO()
    write_json(report, out)
    written = json.loads(out.getvalue())
    assert written == json.loads(json.dumps(report.to_dict()))
    assert [p["name"] for p in written["params"]] == names
    hists = [t["hist"] for p in written["params"] for t in p["tensors"]]
    assert all(len(h) == 256 for h in hists) and sum(1 for h in hists if sum(map(bool, h)) > 16) >= 2
    assert out.getvalue().count('"hist": [0, 0,') >= 4  # json.dumps' own spacing: the file reads the same as before
