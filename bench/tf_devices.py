"""The TensorFlow device a TF-based system runs on, and its peak memory."""

import tensorflow as tf


def tensorflow_device():
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else "CPU"


def tensorflow_peak_device_bytes():
    """Peak bytes TensorFlow allocated on its first GPU; None on CPU, where
    the process's peak resident memory is the figure that counts."""
    gpus = tf.config.list_logical_devices("GPU")
    return tf.config.experimental.get_memory_info(gpus[0].name)["peak"] if gpus else None
