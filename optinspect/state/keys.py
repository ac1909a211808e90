"""The optimizer-state key names the engine knows. Torch-free on purpose: the TUI's columns need them before
its first paint, and torch is imported only afterwards, by the loading worker."""

FIRST = ("exp_avg", "ema", "state1", "momentum_buffer")
SECOND = ("exp_avg_sq", "ema_squared", "state2")
RESETS = ("times_zero", "times_reset")  # resets so far: SCORN/REMASTER, Persona
COUNTERS = ("times_zero", "steps_since_reset", "times_reset")
