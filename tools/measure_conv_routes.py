"""`RoutedConv2D`'s two routes on SD1.5 shapes: convolution vs matmul over patches.

For each (precision, kernel, side, input channels -> output channels) one
`kcv_sd.unet_blocks.RoutedConv2D` (batch 2, random weights) runs its
convolution (`layer.conv2d` on the padded input) and its matmul route
(`layer._as_matmul`), each in its own `tf.function`, alternately, `--reps`
times after a warm-up; the table gives the medians, the matmul/convolution
ratio, the route the layer picks for that shape and each route's GFLOP/s.
A "picked" route that is the slower one by a wide margin means
`CPU_ROUTES.matmul_rows_per_input_channel` does not suit this machine.

    python tools/measure_conv_routes.py --reps 5
"""

import argparse
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

from kcv_sd.precision import dtype_policy_scope
from kcv_sd.unet_blocks import RoutedConv2D
from measure_unet_efficiency import seconds  # tools/ is on the path when run as a script

# (side, input channels, output channels): SD1.5 UNet levels at 128x128 to 1024x1024 pixels.
SHAPES = [(2, 1280, 1280), (4, 1280, 1280), (8, 1280, 1280), (16, 1280, 1280), (32, 1280, 1280),
          (8, 640, 640), (16, 640, 640), (32, 640, 640), (16, 320, 320), (32, 320, 320),
          (64, 320, 320), (16, 2560, 1280)]


def measure(precision, kernel, side, channels_in, channels_out, reps):
    with dtype_policy_scope(precision):
        layer = RoutedConv2D(channels_out, kernel, padding=kernel // 2)
        x = np.random.default_rng(side).standard_normal((2, side, side, channels_in)).astype("float32")
        layer.build(x.shape)
    x = tf.cast(x, layer.compute_dtype)
    convolution = tf.function(lambda x: layer.conv2d(layer.padding2d(x)), autograph=False)
    matmul = tf.function(lambda x: layer._as_matmul(layer.padding2d(x)), autograph=False)
    conv_times, matmul_times = [], []
    for _ in range(2):  # alternate, keep each route's best median
        conv_times.append(seconds(lambda: convolution(x).numpy(), reps))
        matmul_times.append(seconds(lambda: matmul(x).numpy(), reps))
    conv_s, matmul_s = min(conv_times), min(matmul_times)
    flops = 2 * 2 * side * side * kernel * kernel * channels_in * channels_out
    picked = layer.route((2, side, side, 77))
    return (f"| {precision} | {kernel}x{kernel} | {side}x{side} | {channels_in}->{channels_out} | "
            f"{conv_s * 1e3:.1f} | {matmul_s * 1e3:.1f} | {matmul_s / conv_s:.2f} | {picked} | "
            f"{flops / conv_s / 1e9:.0f} | {flops / matmul_s / 1e9:.0f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--kernels", type=int, nargs="+", default=[3, 1])
    args = parser.parse_args()
    print("| precision | kernel | side | channels | convolution ms | matmul ms | ratio | picked "
          "| conv GFLOP/s | matmul GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for precision in args.precisions:
        for kernel in args.kernels:
            for side, channels_in, channels_out in SHAPES:
                print(measure(precision, kernel, side, channels_in, channels_out, args.reps), flush=True)


if __name__ == "__main__":
    main()
