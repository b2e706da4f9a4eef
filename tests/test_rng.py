"""The CPU's compiled uniform draws are the tensor hash's numbers, bit for bit (the other devices use those)."""

from __future__ import annotations

import pytest
import torch

from sim.core.rng import MASK64, Streams, _shr, mix64


@pytest.mark.parametrize("dtype, bits", [(torch.float32, 24), (torch.float64, 53)])
def test_compiled_uniforms_equal_the_tensor_hash(dtype, bits):
    streams = Streams.of(2**63 + 11, [0, 5, 2**40], step=7)
    fast = streams.uniform("check/uniform", (3, 50, 4), dtype)
    z = _shr(streams.bits("check/uniform", (3, 50, 4)), 64 - bits)
    assert torch.equal(fast, (z.to(torch.float64) * 2.0 ** -bits).to(dtype))
    key = int(streams.key("check/uniform")[1]) & MASK64
    assert float(fast[1, 0, 2]) == float(torch.tensor((mix64(key + 3 * 0x9E3779B97F4A7C15) >> (64 - bits))
                                                      * 2.0 ** -bits, dtype=dtype))
    assert 0.0 <= float(fast.min()) and float(fast.max()) < 1.0
