"""Sample depth maps shipped with kcv-sd, each with a prompt: ControlNet inputs with no setup.

The files live in `kcv_sd/samples_data/` (package data, so they install with
the package); `samples/render_scenes.py` renders them. Names are
`{scene}_{aspect}`: scenes room, street, bust; aspects square (512x512),
wide (1216x512) and tall (512x768). Depth PNGs are 16-bit, near = bright.
"""

import json
from functools import cache
from importlib import resources
from pathlib import Path

from kcv_sd.errors import InvalidArgumentError


def sample_names():
    """Every sample's name, sorted."""
    return sorted(_index())


def sample_depth_path(name):
    """Path of the sample's 16-bit depth PNG, for `controlnet.control_images.load_depth`."""
    return _data_dir() / _entry(name)["depth"]


def sample_prompt(name):
    """The prompt written for the sample's scene."""
    return _entry(name)["prompt"]


def _data_dir():
    return Path(str(resources.files("kcv_sd") / "samples_data"))


@cache
def _index():
    return json.loads((_data_dir() / "prompts.json").read_text())


def _entry(name):
    index = _index()
    if name not in index:
        raise InvalidArgumentError(
            f"no sample named {name!r}; choose one of {', '.join(sorted(index))}")
    return index[name]
