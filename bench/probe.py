"""The machine probe job: devices, matmul yardsticks, and facts every run shares.

The faster of two matmul sizes per dtype is the yardstick for the UNet's achieved FLOP/s in precisions of that compute
dtype, and shows whether 16-bit math is fast here (it labels the 16-bit rows). The prompt's token ids (for peers
without a tokenizer offline) and the guided UNet step's FLOPs are worked out here because the parent never imports
TensorFlow.
"""

import tensorflow as tf

from bench.flops import controlnet_flops, unet_flops
from bench.measure import tf_sync, timed
from kcv_sd.components import family_by_name
from kcv_sd.tokenizer import MAX_PROMPT_LENGTH, get_tokenizer

COMPARE_SIZES = (1024, 2048)


def matmul_flops_per_s(size, dtype, repeats=5):
    """The best of `repeats` after a warm-up."""
    a = tf.cast(tf.random.normal((size, size)), dtype)
    timed(tf.matmul, a, a, sync=tf_sync)
    return 2 * size**3 / min(timed(tf.matmul, a, a, sync=tf_sync)[1] for _ in range(repeats))


def devices():
    def model(device):
        details = tf.config.experimental.get_device_details(device) if device.device_type == "GPU" else {}
        return details.get("device_name")

    return [{"type": d.device_type, "name": d.name, "model": model(d)} for d in tf.config.list_physical_devices()]


def job(spec, result):
    w = spec["workload"]
    rates = {dtype: max(matmul_flops_per_s(n, dtype) for n in COMPARE_SIZES)
             for dtype in ("float32", "float16", "bfloat16")}
    result["devices"] = devices()
    result["matmul"] = {"compare_sizes": list(COMPARE_SIZES), "flops_per_s_by_dtype": rates}
    result["token_ids"] = get_tokenizer().pad_batch([w["prompt"], ""]).tolist()
    # A guided step runs the UNet (and a ControlNet) on both halves: twice the images.
    family, size = family_by_name(w["model"]), (w["height"] // 8, w["width"] // 8)
    result["unet_step_flops"] = unet_flops(family.unet, *size, batch=2 * w["batch"], context_length=MAX_PROMPT_LENGTH)
    result["controlnet_step_flops"] = controlnet_flops(family.controlnet, *size, batch=2 * w["batch"],
                                                       context_length=MAX_PROMPT_LENGTH)
