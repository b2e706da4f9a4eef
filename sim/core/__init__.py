"""The engine: state, contracts, the step, random streams, pairing, tensor operations, network.

Imports nothing else of ``sim`` but ``sim.errors``: no scenario parsing, no
LLM machinery, no plugin discovery. It is handed built plugins and tensors.
"""
