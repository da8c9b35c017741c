"""Fresh-process probe: devices, matmul throughput, and facts the runs share.

Run by `bench.subprocess_run` with the workload plus `matmul_size`. The
float32 matmul of that size is the yardstick for the UNet's achieved FLOP/s;
the faster of a 1024^2 and a 2048^2 matmul in each precision shows whether
16-bit math is fast on this device, which labels the mixed-precision rows,
and the fastest of all is the FLOP target's "best matmul" (1024^2 alone gave
bfloat16 589 GFLOP/s in one benchmark and 1355-1424 GFLOP/s at 1024^2 and
2048^2 minutes later). The probe also tokenizes the
prompt once, so that peers without a tokenizer (diffusers here, offline) get
the same ids, and counts the UNet step's FLOPs: the parent process never
imports TensorFlow.
"""

import json
import sys
import time

import tensorflow as tf

from bench.flops import unet_flops
from kcv_sd.components import family_by_name
from kcv_sd.tokenizer import MAX_PROMPT_LENGTH, get_tokenizer

COMPARE_SIZES = (1024, 2048)


def matmul_flops_per_s(size, dtype, repeats=5):
    a = tf.cast(tf.random.normal((size, size)), dtype)
    tf.matmul(a, a).numpy()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tf.matmul(a, a).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def devices():
    names = []
    for device in tf.config.list_physical_devices():
        details = tf.config.experimental.get_device_details(device) if device.device_type == "GPU" else {}
        names.append({"type": device.device_type, "name": device.name,
                      "model": details.get("device_name")})
    return names


def guided_step_flops(spec):
    """One guided step runs the UNet on both halves: twice the images."""
    unet = family_by_name(spec["model"]).unet
    return unet_flops(unet, spec["height"] // 8, spec["width"] // 8, batch=2 * spec["batch"],
                      context_length=MAX_PROMPT_LENGTH)


def main(spec_path, result_path):
    with open(spec_path) as source:
        spec = json.load(source)
    yardstick_size = spec["matmul_size"]
    dtype_rates = {dtype: max(matmul_flops_per_s(size, dtype) for size in COMPARE_SIZES)
                   for dtype in ("float32", "float16", "bfloat16")}
    probe = {
        "status": "ok",
        "devices": devices(),
        "matmul": {
            "size": yardstick_size,
            "float32_flops_per_s": matmul_flops_per_s(yardstick_size, "float32"),
            "compare_sizes": list(COMPARE_SIZES),
            "flops_per_s_by_dtype": dtype_rates,
        },
        "token_ids": get_tokenizer().pad_batch([spec["prompt"], ""]).tolist(),
        "unet_step_flops": guided_step_flops(spec),
    }
    with open(result_path, "w") as out:
        json.dump(probe, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
