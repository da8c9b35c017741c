"""Kernel routes: which kernel a UNet or ControlNet layer runs at a given size.

Two layers have a choice. A `RoutedConv2D` runs as a matmul (over gathered
patches for 3x3 kernels) or as a convolution; an `Attention` attends to all
queries at once or in chunks that bound the scores in memory. Both choices
depend on the feature-map size only.

Traced inside `static_routes(...)`, the layers read the size from here and
choose in Python: the graph holds one kernel per layer, and traces whose
routes (`routes`) agree are the same graph. Outside it they choose at run
time with a `tf.cond` per layer: one graph for every size, larger and slower
to trace. The thresholds are per device kind (`RoutePolicy`, entered with
`device_routes`); the CPU ones were measured on CPUs (docs/latency_levers.md,
sections 6 and 8).
"""

import contextlib
import dataclasses
import threading


@dataclasses.dataclass(frozen=True)
class RoutePolicy:
    """The size thresholds of the layers' choices on one kind of device."""

    # A convolution runs as one matmul when its input has at most this many
    # rows (batch x height x width) per input channel; 1x1 convolutions
    # always do.
    matmul_rows_per_input_channel: int
    # Above this many attention scores (batch x heads x queries x keys) at
    # once, queries are processed in chunks: a 2048x2048 image's first-level
    # self-attention would otherwise hold 2 x 8 x 65536^2 scores (~275 GB).
    max_scores_at_once: int = 2**28  # 1 GiB of float32 scores


# Measured on CPUs: with few rows and many channels oneDNN's convolution is
# bound by reading its weights, and a matmul is faster; and attention in
# chunks of 2**24 scores is faster at 512x512 than all at once (the chunk's
# scores stay in cache between the products and the softmax), for less peak
# memory (docs/latency_levers.md, sections 14 and 16).
CPU_ROUTES = RoutePolicy(matmul_rows_per_input_channel=1, max_scores_at_once=2**24)
# GPUs and TPUs keep their libraries' convolutions (cuDNN, XLA's) until a
# measurement there says otherwise.
ACCELERATOR_ROUTES = RoutePolicy(matmul_rows_per_input_channel=0)
ROUTES_BY_DEVICE = {"cpu": CPU_ROUTES, "gpu": ACCELERATOR_ROUTES, "tpu": ACCELERATOR_ROUTES}

_traced = threading.local()


@contextlib.contextmanager
def device_routes(policy):
    """Layers traced (or routed) in this context follow `policy`; outside
    any, `CPU_ROUTES`."""
    previous = getattr(_traced, "policy", None)
    _traced.policy = policy
    try:
        yield
    finally:
        _traced.policy = previous


def current_policy():
    return getattr(_traced, "policy", None) or CPU_ROUTES


@contextlib.contextmanager
def static_routes(batch, height, width, context_length):
    """Layers traced in this context choose their routes in Python for latents
    of (batch, height, width) and a text context of `context_length` tokens."""
    previous = getattr(_traced, "size", None)
    _traced.size = (batch, height, width, context_length)
    try:
        yield
    finally:
        _traced.size = previous


def traced_size():
    """The (batch, height, width, context_length) of the enclosing
    `static_routes`, or None: choose at run time."""
    return getattr(_traced, "size", None)


def side_at(side, level):
    """A latent side after `level` stride-2 convolutions: each takes n to ceil(n / 2)."""
    return -(-side // 2**level)


def tokens_at(size, level):
    """Feature-map positions at `level` (halvings of the latent) for a `static_routes` size."""
    return side_at(size[1], level) * side_at(size[2], level)


def conv_takes_matmul(kernel_size, strides, input_channels, rows):
    """Whether a convolution over an input of `rows` rows (a Python int, or a
    tensor at run time) runs as a matmul."""
    if kernel_size == 1 and strides == 1:
        return True
    return rows <= current_policy().matmul_rows_per_input_channel * input_channels


def attention_is_chunked(batch, num_heads, queries, keys):
    """Whether attention of this shape (Python ints, or tensors at run time) runs in query chunks."""
    return batch * num_heads * queries * keys > current_policy().max_scores_at_once


def routes(layers, batch, height, width, context_length):
    """The route of every layer with a choice in `layers` and their sublayers,
    at this size: traces whose routes are equal are the same graph."""
    size = (batch, height, width, context_length)
    return tuple(layer.route(size)
                 for top in layers for layer in top._flatten_layers(include_self=True)
                 if hasattr(layer, "route"))
