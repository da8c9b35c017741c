"""What a worker measures with: a call's seconds once its device work is done, and TensorFlow's device and peak memory.

Frameworks are imported when first needed, so a worker's import time, which a cold start reports, stays its system's.
"""

import time


def timed(fn, *args, sync=None, **kwargs):
    """`fn(*args, **kwargs)` and its seconds; `sync(value)`, timed too, waits for work the call only queued."""
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


class TFDevice:
    """A TensorFlow runner's device, and its peak allocation there (None on a CPU, where peak RSS counts)."""

    @property
    def device(self):
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return gpus[0].name if gpus else "CPU"

    def peak_device_bytes(self):
        import tensorflow as tf

        return None if self.device == "CPU" else tf.config.experimental.get_memory_info(self.device)["peak"]
