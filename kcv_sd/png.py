"""PNG output: text metadata to reproduce an image, and writes that never half-finish."""

import json
import os
import tempfile
from pathlib import Path

from PIL import PngImagePlugin

METADATA_KEY = "kcv-sd"


def save_png(image, path, parameters):
    """Write `image` with `parameters` as JSON text, via a temp file and rename."""
    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, json.dumps(parameters, sort_keys=True))
    path = Path(path)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        os.replace(temp_name, path)
    except BaseException:
        os.unlink(temp_name)
        raise


def read_parameters(path):
    """The parameters `save_png` stored in a PNG."""
    from PIL import Image

    with Image.open(path) as image:
        return json.loads(image.text[METADATA_KEY])
