"""How fast the UNet step could be if only its matmuls and convolutions cost time.

The FLOP-efficiency target of issue 6 divides the UNet step's FLOP/s by the
best square matmul the bench probes (1024^2 or 2048^2). At small latents
the UNet's matrices are not square: the deep levels multiply a few rows
(batch x positions) by weights of up to 1280x11520, which is bound by
reading the weights, not by the matrix units. This script traces the SD1.5
UNet (random weights, the pipeline's layer routes, guided batch of 2) at one
latent size, collects every MatMul, BatchMatMul and Conv2D with its static
shapes, times each distinct shape alone (median of `--reps`, `COPIES` per call
so that dispatch is not counted), and sums them:
the "floor" is the step time with every other op free. Its FLOP/s, beside
the square matmul's, is the most the target's ratio could reach at this size.

    python tools/measure_matmul_floor.py --precision bfloat16 --side 16
"""

import collections
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf

from bench.flops import unet_flops
from kcv_sd.routing import static_routes
from measure_unet_efficiency import one_size_arguments, seconds  # tools/ is on sys.path when run as a script

TIMED_OPS = ("MatMul", "BatchMatMulV2", "Conv2D")
COPIES = 4


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def traced_ops(graph):
    """Each (op type, input shapes, attributes that change the work) in `graph`, with its count."""
    found = collections.Counter()
    for op in graph.get_operations():
        if op.type in TIMED_OPS:
            shapes = tuple(tuple(t.shape.as_list()) for t in op.inputs[:2])
            attrs = {name: _hashable(op.get_attr(name)) for name in ("transpose_a", "transpose_b", "adj_x", "adj_y",
                                                          "strides", "padding") if name in op.node_def.attr}
            found[(op.type, shapes, tuple(sorted(attrs.items())))] += 1
    return found


def op_alone(op_type, shapes, attrs, dtype):
    """One `tf.function` running the op `COPIES` times on distinct second
    operands (so nothing is merged), each output reduced to a scalar: timed
    per op without the per-call dispatch cost that a one-op call would add."""
    attrs = dict(attrs)
    if op_type == "Conv2D":
        attrs["padding"] = attrs["padding"].decode()
        attrs["strides"] = list(attrs["strides"])
    run = {"MatMul": lambda a, b: tf.raw_ops.MatMul(a=a, b=b, **attrs),
           "BatchMatMulV2": lambda a, b: tf.raw_ops.BatchMatMulV2(x=a, y=b, **attrs),
           "Conv2D": lambda a, b: tf.raw_ops.Conv2D(input=a, filter=b, **attrs)}[op_type]
    first = tf.cast(tf.random.normal(shapes[0]), dtype)
    seconds_ = [tf.cast(tf.random.normal(shapes[1]), dtype) for _ in range(COPIES)]
    return tf.function(lambda: tf.add_n([tf.reduce_sum(tf.cast(run(first, b), tf.float32)) for b in seconds_]))


def main():
    args, config, model, inputs = one_size_arguments(__doc__.splitlines()[0], side=16, reps=5)
    dtype = model.compute_dtype
    with static_routes(2, args.side, args.side, 77):  # the pipeline's routes for this size
        forward = tf.function(lambda x: model(x)).get_concrete_function(inputs)
    step = seconds(lambda: forward(inputs).numpy(), args.reps)
    floor = 0.0
    rows = []
    for (op_type, shapes, attrs), count in traced_ops(forward.graph).items():
        ops = op_alone(op_type, shapes, attrs, dtype)
        alone = seconds(lambda: ops().numpy(), args.reps) / COPIES  # noqa: B023 (called at once)
        floor += count * alone
        rows.append((count * alone, count, op_type, shapes))
    square_matmul = op_alone("MatMul", ((1024, 1024), (1024, 1024)), (), dtype)
    square = 2 * 1024**3 * COPIES / seconds(lambda: square_matmul().numpy(), args.reps)
    flops = unet_flops(config, args.side, args.side, batch=2, context_length=77)
    print(f"SD1.5 UNet, {dtype}, latent {args.side}x{args.side}, batch 2: {flops / 1e9:.1f} GFLOP")
    print("| | s | GFLOP/s | % of 1024^2 matmul |")
    print("|---|---:|---:|---:|")
    print(f"| 1024^2 matmul | - | {square / 1e9:.0f} | 100% |")
    for name, s in (("matmuls and convolutions alone (floor)", floor), ("whole UNet forward", step)):
        print(f"| {name} | {s:.3f} | {flops / s / 1e9:.0f} | {100 * flops / s / square:.0f}% |")
    print("\nlargest shares of the floor (s, count, op, input shapes):")
    for total, count, op_type, shapes in sorted(rows, reverse=True)[:8]:
        print(f"  {total:.3f}  {count:3d}x {op_type} {shapes}")


if __name__ == "__main__":
    main()
