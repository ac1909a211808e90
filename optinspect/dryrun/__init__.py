"""Dry-run: build the optimizer from a config and take real steps, to test the config before the real run.

model (what is stepped on) -> engine (the loop, the float32 shadow) -> report (plain dataclasses); rendering lives in
render/dryrun.py, saving in state/save.py."""
