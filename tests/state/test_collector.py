"""The collector paused while a state loads (a process of our own), and restored after."""

import gc

import pytest

from optinspect.state.collector import long_lived


def test_the_collector_is_paused_while_a_state_loads_and_restored_after():
    """`long_lived` (around loads, in a process of our own): no automatic collection inside; afterwards the
    collector is as it was, also after an error, and what was built is out of its later walks."""
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    with long_lived():
        assert not gc.isenabled()
        built = [[i] for i in range(1000)]
    assert gc.isenabled() and gc.get_freeze_count() >= frozen + len(built)
    with pytest.raises(ValueError), long_lived():
        raise ValueError
    assert gc.isenabled()
    gc.disable()
    try:
        with long_lived():
            pass
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()
