import pytest
import torch

from optinspect.optimizers import _rounding


@pytest.fixture
def bits_ahead_on(monkeypatch):
    """Stochastic rounding draws its bits ahead on a helper thread whatever the step's size or the machine's
    idle CPUs, in chunks small enough that requests straddle them. Yields the list of streams started."""
    started = []
    real = _rounding._BitsAhead

    class Spy(real):
        def __init__(self):
            super().__init__()
            started.append(self)

    monkeypatch.setattr(_rounding, "AHEAD_MIN", 0)
    monkeypatch.setattr(_rounding, "AHEAD_CHUNK", 500)
    monkeypatch.setattr(_rounding, "_cores", lambda: torch.get_num_threads() + 1)
    monkeypatch.setattr(_rounding, "_BitsAhead", Spy)
    return started
