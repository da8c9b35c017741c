"""First call of a 512x512 SD1.5 pipeline with and without the graph cache, each in a fresh process.

Three processes in turn, sharing one empty cache folder: `graph_cache=False`; `graph_cache=FOLDER` with the
folder empty (it traces, optimises and writes the text encoder's, step's and decoder's graphs); `graph_cache=FOLDER` again (it
reads them). Each
builds `Pipeline(model="sd15", weights="random", precision=P)`, then times its first image and a second one
(2 DDIM steps, guidance 7.5); the first-call overhead is their difference. `--reps` repeats the three in turn.

    python tools/measure_graph_cache.py --precision float32 --reps 1
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def child(precision, cache, folder, side):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    from kcv_sd.pipeline import Pipeline

    began = time.perf_counter()  # this run's folder, not the user's cache
    pipeline = Pipeline(model="sd15", weights="random", precision=precision, graph_cache=cache and folder)
    built = time.perf_counter()
    times, images = [], []
    for _ in range(2):
        start = time.perf_counter()
        images.append(np.asarray(pipeline("a photograph of an astronaut riding a horse", width=side, height=side,
                                          num_inference_steps=2, seed=1)))
        times.append(time.perf_counter() - start)
    sources = pipeline.graph_sources()
    np.save(os.path.join(folder, f"image_{cache}_{len(os.listdir(folder))}.npy"), images[0])
    print(json.dumps({"cache": cache, "sources": sources, "build_s": round(built - began, 2),
                      "first_s": round(times[0], 2), "second_s": round(times[1], 2),
                      "overhead_s": round(times[0] - times[1], 2)}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.precision, args.child[0] == "on", args.child[1], args.side)
    folder = tempfile.mkdtemp(prefix="kcv_sd_graphs_")
    for _ in range(args.reps):
        for flag in ("off", "on", "on"):
            subprocess.run([sys.executable, __file__, "--precision", args.precision, "--side", str(args.side),
                            "--child", flag, folder], check=True)
        for name in os.listdir(folder):
            if name.endswith(".graph"):
                os.remove(os.path.join(folder, name))  # the next repetition starts empty again
    import numpy as np

    images = [np.load(os.path.join(folder, name)) for name in sorted(os.listdir(folder)) if name.endswith(".npy")]
    print("first images identical:", all(np.array_equal(images[0], image) for image in images))


if __name__ == "__main__":
    main()
