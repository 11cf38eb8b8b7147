"""How close two float32 results must be when they do not come from one and the same run.

A separately created ONNX Runtime session, another batch size, another thread count or
another CPU may pick other kernels and sum in another order (other SIMD widths, other
blocking). Each float32 operation then rounds differently, by up to one unit in the last
place (eps = 1.19e-7 relative), and a layer's sum of n terms can drift by about sqrt(n)
of those. Results are therefore compared relative to their size, never bit for bit:

- ``RTOL`` (1e-5, about 80 float32 ulps): shallow graphs, such as the card-shaped
  stand-ins (a pooling, one linear layer, a softmax) and the small CC0 models, and what
  the pipeline derives from their distributions (expected age, std, probabilities).
- ``DEEP_RTOL`` (1e-4): the VGG-16 and GoogLeNet stand-ins, 10 to 16 layers deep with
  sums of up to 25088 terms, whose outputs are compared across sessions or batch sizes.
- ``PROB_ATOL`` (1e-7, one float32 eps): the floor for probabilities near zero, whose
  relative error says nothing (a softmax output of 1e-30 may well come out as 0).

A distribution's expected value is compared after renormalising it in float64 as
``estimates.py`` does: a float32 softmax sums to 1 only within a few eps, which moves an
expected age of 30 years by a few 1e-6 years.
"""

from __future__ import annotations

import numpy as np

F32_EPS = float(np.finfo(np.float32).eps)
RTOL = 1e-5
DEEP_RTOL = 1e-4
PROB_ATOL = F32_EPS


def expected_value(probs: np.ndarray, values: np.ndarray) -> float:
    """The distribution's mean after renormalising it in float64, as the pipeline does."""
    p = np.asarray(probs, dtype=np.float64)
    return float((p / p.sum()) @ np.asarray(values, dtype=np.float64))
