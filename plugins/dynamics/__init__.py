"""Dynamics plugins: how internal values change given what agents expressed."""
