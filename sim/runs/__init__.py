"""Runs: the loop around the engine with checkpoints and interrupts, the run log, and reading runs back."""
