"""optimizers/_common.py's slicing and scratch helpers (the numerics they serve are checked against the
originals in test_golden, test_oracles and test_behaviour)."""

import threading

import pytest
import torch

import optinspect.optimizers._common as common


def test_windows_slice_contiguous_cpu_tensors_and_keep_the_rest_whole(monkeypatch):
    monkeypatch.setattr(common, "CPU_SLICE", 128)
    a, b = torch.arange(1000.0), torch.zeros(1000)
    parts = common.windows([a, None, b])
    assert [start for start, _ in parts] == list(range(0, 1000, 128))
    assert all(w[1] is None and w[0].numel() == w[2].numel() for _, w in parts)
    assert torch.equal(torch.cat([w[0] for _, w in parts]), a)  # every element once, in order
    assert [s for s, _ in common.windows([a], multiple=100)] == list(range(0, 1000, 100))  # whole blocks
    strided = torch.zeros(40, 25).t()
    [(start, [whole])] = common.windows([strided])  # not contiguous: one window, the tensor itself
    assert start == 0 and whole is strided
    assert len(common.windows([torch.zeros(128)])) == 1  # no longer than a slice


def test_scratch_is_reused_per_slot_and_thread_and_grows_to_the_largest_tensor(monkeypatch):
    monkeypatch.setattr(common, "CPU_SLICE", 1024)
    monkeypatch.setattr(common._SCRATCH, "bufs", {}, raising=False)
    x = torch.zeros(16, 32)
    a, b = common.scratch(0, x), common.scratch(1, x)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.data_ptr() != b.data_ptr()  # two slots never alias
    assert common.scratch(0, torch.zeros(100)).data_ptr() == a.data_ptr()  # the same memory, step after step
    assert common.scratch(0, torch.zeros(100, dtype=torch.float64)).data_ptr() != a.data_ptr()
    big = common.scratch(0, torch.zeros(1025))  # longer than a slice: the slot grows to it, and keeps it
    assert big.numel() == 1025 and common.scratch(0, torch.zeros(16, 32)).data_ptr() == big.data_ptr()
    assert common.scratch(0, torch.zeros(16, 32).t()) is None  # strides a fresh result would keep
    other = []
    t = threading.Thread(target=lambda: other.append(common.scratch(0, x).data_ptr()))
    t.start()
    t.join()
    assert other[0] != a.data_ptr()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_scratch_off_cpu_is_none():
    assert common.scratch(0, torch.zeros(10, device="cuda")) is None


def test_multi_tensor_batches_group_what_one_chain_can_take(monkeypatch):
    """Consecutive fp32 tensors of one device that fit one window, up to a slice's worth together; a tensor that
    needs slicing, a bf16 one (its scalars would round differently) or another dtype starts a batch of its own.
    On CPU only when asked for: there the tensor-by-tensor chain is faster."""
    import optinspect.optimizers._common as C

    monkeypatch.setattr(C, "CPU_SLICE", 100)
    ts = [torch.zeros(30), torch.zeros(30), torch.zeros(30), torch.zeros(30), torch.zeros(500), torch.zeros(10),
          torch.zeros(10, dtype=torch.bfloat16), torch.zeros(10, dtype=torch.bfloat16), torch.zeros(10),
          torch.zeros(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)]
    assert C.tensor_batches(ts) == [[i] for i in range(len(ts))]
    monkeypatch.setattr(C, "MULTI_TENSOR_ON_CPU", True)
    assert C.tensor_batches(ts) == [[0, 1, 2], [3], [4], [5], [6], [7], [8], [9, 10]]


_OPS = {
    "mul_": lambda t, x: t.clone().mul_(x),
    "div_": lambda t, x: t.clone().div_(x),
    "add_": lambda t, x: t.clone().add_(x),
    "sub": lambda t, x: t - x,
    "div": lambda t, x: t / x,
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(), (7,), (3, 5)])
@pytest.mark.parametrize("op", sorted(_OPS))
def test_number_gives_the_kernel_what_a_python_number_does(dtype, shape, op):
    """torch with the Python number is the oracle: same dtype, same bits, for values whose fp32 and fp64 roundings
    differ (1/3, 0.1) and tiny or large ones."""
    g = torch.Generator().manual_seed(0)
    t = (torch.randn(shape, generator=g) * torch.randn(shape, generator=g).mul(8).exp()).to(dtype)
    for x in (0.999, 1 / 3, 0.1, 1e-30, 221.70250336881628, 1e8 + 1, 3):
        want = _OPS[op](t, x)
        got = _OPS[op](t, common.number(x, t))
        assert got.dtype == want.dtype
        assert torch.equal(got, want), (x, got, want)


def test_number_is_a_cached_tensor_only_where_that_is_exact():
    f32, f64, bf16 = torch.ones(3), torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.bfloat16)
    assert common.number(0.5, f32) is common.number(0.5, f32)
    assert common.number(0.5, f32).dtype == torch.float32 and common.number(0.5, f64).dtype == torch.float64
    assert common.number(0.5, bf16) == 0.5 and not isinstance(common.number(0.5, bf16), torch.Tensor)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("make", [lambda g: torch.randn(3072, 16, generator=g), lambda g: torch.randn(64, 96, generator=g).t(),
                                  lambda g: torch.randn(5, generator=g), lambda g: torch.randn((), generator=g)])
def test_norm2_is_tensor_norm(dtype, make):
    g = torch.Generator().manual_seed(1)
    t = (make(g) * 1e3).to(dtype)
    assert torch.equal(common.norm2(t), t.norm(2))
