import os

import pytest
import torch


def make_state(folder, n_extra=0, nan=False):
    """A real state made by our optimizers: AdamW8bitKahan with 8-bit and fp32 paths, one NaN if asked."""
    import optinspect

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 32) * 0.1), torch.nn.Parameter(torch.randn(32) * 0.1),
              torch.nn.Parameter(torch.randn(8, 4, 3, 3) * 0.1)]
    params += [torch.nn.Parameter(torch.randn(16) * 0.1) for _ in range(n_extra)]
    opt = optinspect.build_optimizer(params, {"type": "AdamW8bitKahan", "lr": 1e-3, "stabilize": False,
                                              "weight_decay": 0.0, "min_8bit_size": 256})
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    sd = opt.state_dict()
    if nan:
        sd["state"][1]["__bnb_optimizer_quant_state__"]["state1"][3] = float("nan")
    path = os.path.join(folder, "state.pt")
    torch.save({"optimizer": sd, "step": 4}, path)
    return path


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_state(str(tmp_path), nan=True)
    return tmp_path


def screen_text(app) -> str:
    """What the terminal shows, as plain text (from Textual's own SVG export)."""
    import html
    import re

    svg = app.export_screenshot()
    texts = re.findall(r"<text[^>]*>(.*?)</text>", svg, flags=re.S)
    return html.unescape(" ".join(re.sub(r"<[^>]+>", "", t) for t in texts)).replace("\xa0", " ")
