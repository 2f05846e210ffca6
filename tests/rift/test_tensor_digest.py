"""Digests of stored tensor values (``rift/tensor_digest.py``): equal exactly where
``torch.equal`` calls two tensors equal, whatever the chunks the bytes arrive in."""

from __future__ import annotations

import numpy as np

from rift.tensor_digest import safetensors_digest


def _digest(values: list[float], dtype: str, chunk: int = 1 << 20) -> str:
    raw = {"F32": np.asarray(values, "<f4").tobytes(), "F64": np.asarray(values, "<f8").tobytes(),
           "BF16": (np.asarray(values, "<f4").view("<u4") >> 16).astype("<u2").tobytes()}[dtype]
    return safetensors_digest([raw[i:i + chunk] for i in range(0, len(raw), chunk)], dtype,
                              (len(values),))


def test_digests_compare_values_as_torch_equal_does() -> None:
    values = [0.5, -1.25, 3.0, 0.0]
    reference = _digest(values, "F32")
    assert _digest(values, "F32", chunk=3) == reference  # chunks cut inside an element
    assert _digest([0.5, -1.25, 3.0, -0.0], "F32") == reference  # torch.equal: -0.0 == 0.0
    assert _digest(values, "BF16") == reference  # the same values in another type
    # A float64 copy of float32 weights is a copy, as the job (torch.equal) reads it.
    assert _digest(values, "F64") == reference
    assert _digest([0.5, -1.25, 3.0, 1e-8], "F64") != reference
    assert _digest([0.5, -1.25, 3.0, 1e-8], "F32") != reference
    assert safetensors_digest([np.asarray(values, "<f4").tobytes()], "F32", (2, 2)) != reference
