"""`kcv-sd`: the command line. User errors print one line and exit 2."""

import functools
import random
from pathlib import Path

import click

from kcv_sd import devices
from kcv_sd.cli_common import pipeline_options, user_errors
from kcv_sd.cli_study import study
from kcv_sd.components import family_by_name
from kcv_sd.errors import InvalidArgumentError
from kcv_sd.png import check_destination
from kcv_sd.upscale import DEFAULT_REFINE_STRENGTH, generate_upscaled
from kcv_sd.weight_cache import SETTINGS, choose_weight_cache
from kcv_sd.weight_cache import report as weight_cache_report


def output_paths(output, count):
    """One path per image: `out.png`, or `out-0.png`, `out-1.png`, ... for several."""
    output = Path(output)
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


def check_outputs(paths, overwrite):
    for path in paths:
        check_destination(path, overwrite)


def list_samplers(context, parameter, value):
    """--sampler list: print each sampler's name and its A1111 names, and exit."""
    if value != "list":
        return value
    from kcv_sd.samplers import ALIASES

    for name, aliases in ALIASES.items():
        click.echo(f"{name}: {', '.join(aliases)}")
    context.exit(0)


@click.group()
@click.version_option(package_name="kcv-sd")
def main():
    """Fast, controllable Stable Diffusion 1.5 on Keras 3 (KerasCV-compatible)."""


def console_main():
    """The `kcv-sd` command."""
    main()


@main.command()
@click.argument("prompt")
@click.option("--negative-prompt", default=None, help="What to steer away from.")
@click.option("--width", type=int, default=None,
              help="Multiple of 8, 64..2048 [default: 512, or the init image's size rounded down].")
@click.option("--height", type=int, default=None,
              help="Multiple of 8, 64..2048 [default: 512, or the init image's size rounded down].")
@click.option("--steps", default=50, show_default=True,
              help="Sampler steps (img2img runs int(steps * strength)).")
@click.option("--guidance", default=7.5, show_default=True, help="Classifier-free guidance scale.")
@click.option("--cfg-cutoff", type=float, default=None,
              help="Drop guidance after this fraction of the steps (0..1; faster, changes the image) "
                   "[default: guide every step].")
@click.option("--seed", type=int, default=None, help="Noise seed (default: a random one, recorded in the PNG).")
@click.option("--num-images", default=1, show_default=True, help="Images for the prompt.")
@click.option("-o", "--output", default="kcv-sd.png", show_default=True,
              help="PNG path; several images get -0, -1, ... suffixes.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@pipeline_options
@click.option("--vae", default=None,
              help="With a single-file --weights checkpoint: a VAE file or folder in place of its own "
                   "(e.g. vae-ft-mse-840000-ema-pruned.safetensors).")
@click.option("--compiled-loop/--step-loop", default=False, show_default=True,
              help="Run all denoising steps in one compiled function (no progress bar).")
@click.option("--sampler", default="ddim", show_default=True, is_eager=True, callback=list_samplers,
              help="A sampler's name or its AUTOMATIC1111 name (e.g. dpmpp_2m_karras, \"Euler a\", PLMS); "
                   "'list' lists them.")
@click.option("--control", "controls", multiple=True, help="Control image (e.g. a depth map); repeat for several.")
@click.option("--controlnet", "controlnets", multiple=True,
              help="ControlNet checkpoint (.safetensors) or Hugging Face repo id; one per --control.")
@click.option("--control-scale", "control_scales", multiple=True, type=float,
              help="controlnet_conditioning_scale; one, or one per ControlNet (default 1.0).")
@click.option("--guess-mode", is_flag=True, help="diffusers' guess mode.")
@click.option("--control-start", default=0.0, show_default=True, help="control_guidance_start.")
@click.option("--control-end", default=1.0, show_default=True, help="control_guidance_end.")
@click.option("--control-sizing", default="resize", show_default=True,
              help="resize (stretch), crop, pad, or native (size from the control image's aspect ratio).")
@click.option("--init-image", default=None,
              help="img2img/inpainting start image [default size: its own, rounded down to multiples of 8].")
@click.option("--strength", type=float, default=None,
              help="How much of --init-image to repaint, 0..1 [default: 0.8; 1.0 with --mask].")
@click.option("--mask", "mask_image", default=None, help="Inpainting mask for --init-image: white repaints, black keeps.")
@click.option("--tiled-decode/--no-tiled-decode", default=None,
              help="Decode in overlapping tiles to bound memory [default: above 1024x1024].")
@click.option("--upscale", type=float, default=None,
              help="Generate at --width x --height, enlarge by this factor (> 1; at most 2048 a side) "
                   "and refine with img2img.")
@click.option("--refine-strength", default=DEFAULT_REFINE_STRENGTH, show_default=True,
              help="img2img strength of the --upscale refine pass, 0..1.")
@click.option("--deep-cache", type=int, default=None,
              help="DeepCache: the full UNet every N steps, a shallow pass in between (faster, changes the image; "
                   "3 is usual) [default: full UNet every step].")
@click.option("--token-merging", type=float, default=None,
              help="ToMe SD: merge this share of the tokens before the first level's self-attention "
                   "(0 to 1, 0.5 is usual; faster, changes the image) [default: none].")
@click.option("--lora", "loras", multiple=True, metavar="FILE[:SCALE]",
              help="A LoRA or LoCon file (kohya/A1111 or diffusers, SD1.x) fused into the weights at SCALE "
                   "[default: 1]; repeat for several.")
@click.option("--weight-cache", type=click.Choice(SETTINGS), default="auto", show_default=True,
              help="oneDNN weight caching on the CPU: faster, for one more copy of the UNet's and ControlNets' "
                   "weights; auto: on where four such copies are free (`kcv-sd env` says which).")
@click.option("--graph-cache/--no-graph-cache", default=None,
              help="Keep the text encoder's, denoising step's and decoder's optimised graphs on disk (under "
                   "KERAS_HOME) and reuse them in later runs: a faster first image on a CPU without XLA "
                   "[default: on, unless KCV_SD_GRAPH_CACHE=off].")
@click.option("--progress/--no-progress", default=True, show_default=True)
@user_errors
def generate(prompt, negative_prompt, width, height, steps, guidance, cfg_cutoff, seed, num_images,
             output, overwrite, model, weights, precision, xla, vae, compiled_loop, sampler, controls, controlnets,
             control_scales, guess_mode, control_start, control_end, control_sizing,
             init_image, strength, mask_image, tiled_decode, upscale, refine_strength, deep_cache, token_merging, loras,
             weight_cache, graph_cache, progress):
    """Generate images from PROMPT and write them as PNG with reproduction metadata."""
    from kcv_sd.samplers import resolve

    sampler = resolve(sampler)  # the PNG records the canonical name
    if len(controls) != len(controlnets):
        raise InvalidArgumentError(
            f"{len(controls)} --control images for {len(controlnets)} --controlnet models: give one each."
        )
    control = {}
    if controlnets:
        control = dict(image=list(controls), controlnet=list(controlnets),
                       controlnet_conditioning_scale=(
                           control_scales[0] if len(control_scales) == 1 else list(control_scales) or 1.0),
                       guess_mode=guess_mode, control_guidance_start=control_start,
                       control_guidance_end=control_end, control_sizing=control_sizing)
    seed = random.randrange(2**31) if seed is None else seed
    options = dict(width=width, height=height, num_inference_steps=steps, guidance_scale=guidance, seed=seed,
                   num_images_per_prompt=num_images, sampler=sampler, init_image=init_image, strength=strength,
                   mask_image=mask_image, tiled_decode=tiled_decode, cfg_cutoff_step_ratio=cfg_cutoff,
                   **{name: value for name, value in (("deep_cache", deep_cache), ("token_merging", token_merging))
                      if value is not None}, **control)

    from kcv_sd import __version__
    from kcv_sd.generation import check_generate, get_pipeline
    from kcv_sd.png import save_png

    # Everything is checked before any model is built.
    check_generate(prompt, negative_prompt, model=model, precision=precision, upscale=upscale,
                   refine_strength=refine_strength, loras=loras, **options)
    paths = output_paths(output, num_images)
    check_outputs(paths, overwrite)
    # Before any model runs: TensorFlow reads the setting at its first oneDNN kernel. Each image size and the
    # unguided steps after a cutoff are step functions of their own, each with its copy.
    step_functions = 1 + (upscale is not None) + (cfg_cutoff is not None)
    choose_weight_cache(weight_cache, family_by_name(model), devices.resolve(precision)[0], len(controlnets),
                        step_functions)
    pipeline = get_pipeline(model, weights, precision, "auto" if xla is None else xla, compiled_loop, vae,
                            "auto" if graph_cache is None else graph_cache)
    pipeline.set_loras(loras)
    precision, xla = pipeline.components.precision, pipeline.jit_compile  # what "auto" chose, for the PNG
    run = pipeline if upscale is None else functools.partial(
        generate_upscaled, pipeline, upscale=upscale, refine_strength=refine_strength)
    images = run(prompt, negative_prompt=negative_prompt, progress=progress, **options)
    if upscale is None:  # an upscaled run is reproduced from the width/height asked for, not its output's
        height, width = images[0].height, images[0].width
    parameters = dict(prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
                      steps=steps, guidance=guidance, cfg_cutoff=cfg_cutoff, seed=seed, num_images=num_images,
                      model=model, weights=weights, **({"vae": vae} if vae else {}), precision=precision, xla=xla,
                      compiled_loop=compiled_loop, init_image=init_image, strength=strength,
                      mask_image=mask_image, tiled_decode=tiled_decode, upscale=upscale,
                      refine_strength=None if upscale is None else refine_strength, deep_cache=deep_cache,
                      token_merging=token_merging,
                      **({"loras": [f"{lora.path}:{lora.scale:g}" for lora in pipeline.loras]} if loras else {}),
                      sampler=sampler, kcv_sd_version=__version__,
                      **{k: v for k, v in control.items() if k not in ("image", "controlnet")},
                      control_images=[str(c) for c in controls], controlnets=list(controlnets))
    for index, (image, path) in enumerate(zip(images, paths)):
        save_png(image, path, {**parameters, "image_index": index}, overwrite=overwrite)
        click.echo(str(path))


@main.command()
def env():
    """Print versions, devices, CPU features and the defaults chosen here (for bug reports)."""
    from kcv_sd import __version__
    from kcv_sd.graph_cache import describe

    click.echo(devices.report(__version__))
    defaults = devices.detected_defaults()
    if defaults.device == "cpu":
        click.echo(weight_cache_report(family_by_name("sd15"), "SD1.5", defaults.precision))
    click.echo(describe())


main.add_command(study)
