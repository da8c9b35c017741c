"""First and second load of an SD1.5-size single-file checkpoint (random weights, real layout).

Writes a CompVis/LDM checkpoint with the keys and shapes of SD1.5's (UNet,
VAE, CLIP ViT-L text encoder; float16 by default, about 2 GB, as most
community files are), its names made by our own tables' inverses
(`kcv_sd.convert.renaming.PrefixTable.file_key`; tests/test_single_file.py
checks the naming against diffusers' converters). Then times
`load_components("sd15", weights=FILE)`, and the VAE encoder's first use,
each in a fresh process with a new Keras home, the file in the page cache:

    build only   the models, zero weights (what every load pays)
    first        hash, read, check, convert, write the converted cache
    second       the converted cache read back (the file is not read)
    no cache     hash known, read, check, convert, nothing written (what
                 every start would cost without the cache)

Prints a Markdown table with each process's peak resident memory. Needs
about 7 GB of memory and 6 GB of disk under --folder (removed afterwards).

    python tools/measure_single_file.py [--dtype float16|float32] [--folder DIR]

With --folder, the folder is kept, and a checkpoint already there is reused
(a new Keras home is made each time).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    t0 = time.perf_counter()
    from kcv_sd import components
    from kcv_sd.convert import converted_cache
    mode, path = sys.argv[1], sys.argv[2]
    imported = time.perf_counter()
    if mode == "build":
        family = components.with_diffusers_numerics(components.FAMILIES["sd15"])
        components.build_models(family, "float32")
        seconds, encoder = time.perf_counter() - imported, None
    else:
        if mode == "nocache":
            converted_cache.save_cached = lambda *args, **kwargs: None
        loaded = components.load_components("sd15", weights=path)
        seconds = time.perf_counter() - imported
        loaded.image_encoder
        encoder = time.perf_counter() - imported - seconds
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"seconds": seconds, "encoder": encoder, "peak_gb": peak,
                      "import": imported - t0}))
""")


def sd15_checkpoint_shapes():
    """{LDM key: shape} of an SD1.5 single-file checkpoint, from diffusers'
    and transformers' models on the meta device (no memory)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from kcv_sd.config import SD15_DIFFUSERS
    from kcv_sd.convert.ldm_layout import TEXT_PREFIX, VAE_PREFIX
    from kcv_sd.convert.ldm_unet import ldm_unet_table
    from kcv_sd.convert.ldm_vae import ldm_vae_table

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4)
        text = CLIPTextModel(CLIPTextConfig(  # OpenAI's CLIP ViT-L/14 text tower
            hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
            hidden_act="quick_gelu", max_position_embeddings=77))
    unet_names, vae_names = ldm_unet_table(SD15_DIFFUSERS), ldm_vae_table(VAE_PREFIX)
    shapes = {unet_names.file_key(k): tuple(v.shape) for k, v in unet.state_dict().items()}
    for key, value in vae.state_dict().items():
        # ldm's VAE attention projections are 1x1 convolutions.
        shape = tuple(value.shape) + ((1, 1) if ".attentions." in key and value.ndim == 2 else ())
        shapes[vae_names.file_key(key)] = shape
    # transformers < 5 (which saved SD1.x's files) names the keys "text_model.*".
    shapes.update({TEXT_PREFIX + "text_model." + k.removeprefix("text_model."): tuple(v.shape)
                   for k, v in text.state_dict().items()})
    return shapes


def write_checkpoint(path, dtype):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors = {}
    for key, shape in sd15_checkpoint_shapes().items():
        if key.endswith("position_ids"):
            tensors[key] = np.arange(77, dtype=np.int64)[None]
        else:
            tensors[key] = (rng.random(shape, dtype=np.float32) * 0.02 - 0.01).astype(dtype)
    save_file(tensors, path)


def run(mode, path, home):
    environment = {**os.environ, "KERAS_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", CHILD, mode, str(path)], capture_output=True, text=True,
                            env=environment, check=False)
    if result.returncode:
        raise SystemExit(f"{mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--folder", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    scratch = Path(args.folder or tempfile.mkdtemp(prefix="kcv-sd-single-file-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        checkpoint = scratch / f"sd15-random-{args.dtype}.safetensors"
        if not checkpoint.is_file():
            write_checkpoint(checkpoint, np.dtype(args.dtype))
        print(f"{checkpoint.name}: {checkpoint.stat().st_size / 2**30:.2f} GiB\n")
        print("| load | seconds | VAE encoder's first use, s | peak memory, GiB |")
        print("|---|---|---|---|")
        home = scratch / "keras_home"
        shutil.rmtree(home, ignore_errors=True)
        for label, mode in (("build only", "build"), ("first", "load"), ("second", "load"),
                            ("no cache", "nocache")):
            if mode == "nocache":
                for entry in (home / "kcv_sd" / "checkpoints").iterdir():
                    if entry.is_dir():
                        shutil.rmtree(entry)  # the file's hash stays known
            result = run(mode, checkpoint, home)
            encoder = "" if result["encoder"] is None else f"{result['encoder']:.1f}"
            print(f"| {label} | {result['seconds']:.1f} | {encoder} | {result['peak_gb']:.1f} |", flush=True)
    finally:
        if args.folder is None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
