"""Time per op type, from a `tf.profiler` trace: what runs, and for how long.

Used by `tools/profile_step.py` (where a UNet step's time goes) and by the
tests that check Grappler fused what `kcv_sd` arranges for it to fuse.
"""

import collections
import contextlib
import glob
import os
import re
import tempfile

import tensorflow as tf


def op_times(logdir, by_place=False):
    """{op type: seconds summed over the executor's threads} from the profile
    in `logdir`; with `by_place`, keyed by (op type, op name without layer
    numbers). The sum over threads can exceed the wall time."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path, = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or name.startswith(("ExecutorState", "ThreadpoolListener")):
                    continue  # kernels are "op name:op type"
                op_name, op_type = name.rsplit(":", 1)
                key = (op_type, re.sub(r"_\d+", "", op_name)) if by_place else op_type
                totals[key] += event.duration_ps / 1e12
    return totals


@contextlib.contextmanager
def profiled():
    """Profile the block; afterwards the yielded dict holds `logdir`, for `op_times`."""
    found = {}
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            yield found
        finally:
            tf.profiler.experimental.stop()
            found["op_times"] = op_times(logdir)
            found["by_place"] = op_times(logdir, by_place=True)
