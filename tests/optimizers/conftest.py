import pytest
import torch

from optinspect.optimizers import _ahead, _spread


def _spy_streams(monkeypatch, cores) -> list:
    started = []
    real = _ahead._BitsAhead

    class Spy(real):
        def __init__(self):
            super().__init__()
            started.append(self)

    monkeypatch.setenv("OPTINSPECT_SIDE_BY_SIDE", "0")  # these steps are about the helper: none side by side
    monkeypatch.setattr(_ahead, "AHEAD_MIN", 0)
    monkeypatch.setattr(_ahead, "AHEAD_CHUNK", 500)
    monkeypatch.setattr(_ahead, "_cores", cores)
    monkeypatch.setattr(_ahead, "_BitsAhead", Spy)
    return started


@pytest.fixture
def bits_ahead_on(monkeypatch):
    """Stochastic rounding draws its bits ahead on a helper thread whatever the step's size, on a CPU the intra-op
    pool leaves idle, in chunks small enough that requests straddle them. Yields the list of streams started."""
    return _spy_streams(monkeypatch, lambda: torch.get_num_threads() + 1)


@pytest.fixture
def thread_lent(monkeypatch):
    """As bits_ahead_on, on a machine with no idle CPU: the intra-op pool (two threads at least, so that CPU
    reductions split their work) lends one of its threads to the helper."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        yield _spy_streams(monkeypatch, lambda: torch.get_num_threads())
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def two_threads():
    """torch's intra-op pool at two threads (CPU reductions then split their work), and `_spread`'s answers
    about which dot products are serial tried afresh."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    _spread._serial.clear()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        _spread._serial.clear()
