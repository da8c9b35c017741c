"""What every `kcv-sd` command shares: one-line user errors and the pipeline options."""

import functools
import sys

import click

from kcv_sd.devices import AUTO
from kcv_sd.errors import KcvSdError
from kcv_sd.precision import PRECISIONS


def user_errors(command):
    """Turn the project's errors into one line on stderr, no traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KcvSdError as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(2)

    return run


def pipeline_options(command):
    """--model, --weights, --precision, --xla: which (cached) pipeline runs."""
    options = [
        click.option("--model", default="sd15", show_default=True,
                     help="Model family: sd15, or tiny for smoke tests."),
        click.option("--weights", default="kerascv", show_default=True,
                     help="'kerascv' (KerasCV's SD v1.4 files, downloaded once), a folder of KerasCV .h5 files, "
                          "a diffusers SD1.x folder or its Hugging Face repo id (owner/name, downloaded once), "
                          "a single-file SD 1.x checkpoint (.safetensors), or 'random'."),
        click.option("--precision", type=click.Choice((AUTO, *PRECISIONS)), default=AUTO, show_default=True,
                     help="auto: this device's (kcv-sd env prints it; bfloat16 on CPUs with native bfloat16, "
                          "else float32; mixed_float16 on GPUs, mixed_bfloat16 on TPUs)."),
        click.option("--xla/--no-xla", default=None,
                     help="Compile with XLA [default: on a GPU or TPU, not on a CPU]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command
