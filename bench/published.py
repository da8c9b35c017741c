"""Published KerasCV-vs-diffusers timings, shown beside ours and labelled as such.

The figures quoted in this project's issue from the KerasCV Stable Diffusion
benchmark: 3 images, 50 steps, 512x512, pretrained weights, GPU. They are
not measured by kcv-bench; `--preset tutorial` runs the same workload here.
"""

WORKLOAD = {"images": 3, "steps": 50, "width": 512, "height": 512}

# seconds: (KerasCV warm, diffusers warm, KerasCV cold, diffusers cold)
TIMINGS = {
    "Tesla T4": (28.97, 41.33, 83.47, 46.27),
    "Tesla V100": (12.45, 12.72, 76.43, 13.90),
}


def published_table():
    rows = []
    for gpu, (kerascv_warm, diffusers_warm, kerascv_cold, diffusers_cold) in TIMINGS.items():
        rows.append({"gpu": gpu, "kerascv_warm_s": kerascv_warm, "diffusers_warm_s": diffusers_warm,
                     "kerascv_cold_s": kerascv_cold, "diffusers_cold_s": diffusers_cold})
    return {"source": "published (quoted in the project issue), not measured here",
            "workload": WORKLOAD, "rows": rows}
