"""oneDNN weight caching, for processes that only run kcv-sd's pipelines.

On the CPU, TensorFlow's oneDNN convolutions and bias-fused matmuls reorder
their weights into a blocked layout on every call; with
`TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1` each kernel keeps the weights it
reordered first. Faster images, at the price of one more copy of the
weights per compiled function (measured in docs/latency_levers.md, section
10).

The hazard: TensorFlow reads the variable once per process and applies it
to every kernel, and a kernel that later sees other weights keeps computing
with its first ones, silently. kcv-sd's pipelines load all weights before
their first call and run their models only inside compiled functions, so
their outputs do not change (`tests/test_weight_cache.py`). `kcv-sd
generate` turns it on; Python callers opt in. GPU kernels are unaffected.
"""

import os

FROZEN_WEIGHTS_VARIABLE = "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"


def cache_weights_for_inference():
    """Ask TensorFlow's oneDNN kernels to keep their reordered weights,
    unless the environment already sets the variable (then that value
    stands: 0 turns caching off). Returns whether caching is asked for.

    Effective only before the process's first oneDNN convolution or matmul
    and for the whole process: call it only where nothing but inference with
    fixed weights runs."""
    value = os.environ.setdefault(FROZEN_WEIGHTS_VARIABLE, "1")
    return value.strip().lower() in ("1", "true")
