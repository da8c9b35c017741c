"""What a worker measures with: a call's seconds once its device work is done,
and the TensorFlow device with its peak memory.

Only `time` is imported here; each framework is imported when first needed,
so a worker's own import time, which a cold start reports, stays its system's.
"""

import time


def timed(fn, *args, sync=None, **kwargs):
    """`fn(*args, **kwargs)` and its seconds; `sync(value)`, timed too, waits
    for work the call only queued."""
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    if sync is not None:
        sync(value)
    return value, time.perf_counter() - start


def timed_into(seconds, fn, *args, sync=None, **kwargs):
    """`fn(*args, **kwargs)`, as `timed`, its seconds appended to the list `seconds`."""
    value, elapsed = timed(fn, *args, sync=sync, **kwargs)
    seconds.append(elapsed)
    return value


def tf_sync(value):
    """TensorFlow: every tensor in `value` materialised as numpy."""
    if hasattr(value, "numpy"):  # one tensor: no walk over a structure
        value.numpy()
        return
    import tensorflow as tf

    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, value)


def torch_sync(value=None):
    """torch: waits for the GPU's queued work (on a CPU, calls have finished)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def tf_device():
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else "CPU"


def tf_peak_device_bytes():
    """Peak bytes TensorFlow allocated on its first GPU; None on a CPU, where
    the process's peak resident memory is the figure that counts."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return tf.config.experimental.get_memory_info(gpus[0].name)["peak"] if gpus else None
