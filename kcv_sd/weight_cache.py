"""oneDNN weight caching, for processes that only run kcv-sd's pipelines.

On the CPU, TensorFlow's oneDNN convolutions and bias-fused matmuls reorder
their weights into a blocked layout on every call. With the environment
variable `TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1`, each kernel keeps the weights
it reordered on its first call instead. On this project's 2-core AMX CPU a
128x128 SD1.5 image took 0.77-0.96x the time (float32, mixed_bfloat16,
bfloat16, across four runs; less gain on a busier machine;
`tools/measure_weight_cache.py`, docs/latency_levers.md section 10).

The price is memory: every compiled function keeps its own copy of the
weights it runs, so each step function (one per image size class, another
for a CFG cutoff) adds about one more copy of the UNet's weights (1.5 GiB in
bfloat16). One step function for every size (`static_routes=False`) keeps a
single copy, but its kernels cache the layout of the first size they run and
reorder again for sizes that need another, so later sizes lose the gain
(docs/latency_levers.md section 10). And TensorFlow reads the variable once
per process, at the first such kernel it builds, and applies it to every
kernel in the process. A kernel that later sees other weights keeps
computing with its first ones, silently: training, weights assigned after a
model has run, a function given other weights as an input, or eager calls of
one shape with other weights (eager kernels are shared). kcv-sd's pipelines
load all weights before their first call and run their models only inside
their compiled functions, so their outputs do not change
(`tests/test_weight_cache.py`).

`kcv-sd generate` (one image size per process) turns it on; Python callers
opt in with `cache_weights_for_inference()` before their first TensorFlow
computation. It concerns TensorFlow's oneDNN CPU kernels only, which
models placed on a GPU do not run.
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
