"""valuesim's first-party plugins.

Each module imports only ``sim``'s public contracts (``sim.contracts``,
``sim.contracts``, ``sim.errors``) and is registered through entry points in
``pyproject.toml``, exactly as a third-party plugin package would be.
"""
