"""Plugins: the kinds, the registry (entry points and drop-in files), contract checks, info and scaffolds."""
