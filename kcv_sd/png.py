"""PNG output: text metadata to reproduce an image, and writes that never
half-finish, never replace a file without leave, and follow the umask."""

import errno
import json
import os
import tempfile
from pathlib import Path

from PIL import PngImagePlugin

from kcv_sd.errors import InvalidArgumentError, OutputError

METADATA_KEY = "kcv-sd"


def check_destination(path, overwrite, flag="--output"):
    """Fail now, not after a generation, if `path` cannot take a new PNG:
    no .png suffix, a folder, a missing or unwritable folder (tried by
    creating a file there), or an existing file without `overwrite`."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InvalidArgumentError(f"Output {path} must end in .png (the metadata is PNG text).")
    if path.is_dir():
        raise InvalidArgumentError(f"Output {path} is a folder: choose a file name for {flag}.")
    if not path.parent.is_dir():
        raise InvalidArgumentError(f"Output folder {path.parent} does not exist: create it first.")
    if path.exists() and not overwrite:
        raise InvalidArgumentError(f"{path} already exists: pass --overwrite or choose another {flag}.")
    try:
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise OutputError(f"Cannot write to {path.parent} ({error.strerror}): choose another {flag}.") from None


def save_png(image, path, parameters, overwrite=False):
    """Write `image` with `parameters` as JSON text: into a temp file beside
    `path`, then moved into place. Without `overwrite` the move links, so a
    file that appeared at `path` meanwhile is kept, never replaced."""
    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, json.dumps(parameters, sort_keys=True, allow_nan=False))
    path = Path(path)
    try:
        fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    except OSError as error:
        raise OutputError(f"Cannot write {path} ({error.strerror}).") from None
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        os.chmod(temp_name, 0o666 & ~_umask())  # mkstemp's 0600 would hide the image from others
        if overwrite:
            os.replace(temp_name, path)
        else:
            _link_new(temp_name, path)
    except OSError as error:
        if error.errno == errno.EEXIST:
            raise OutputError(f"{path} appeared during the generation and was kept: pass --overwrite "
                              "to replace it, or choose another --output.") from None
        raise OutputError(f"Cannot write {path} ({error.strerror or error}).") from None
    finally:
        Path(temp_name).unlink(missing_ok=True)


def _link_new(source, path):
    """Give `source`'s file the new name `path`, failing with EEXIST if
    `path` exists (an exclusive create where the file system has no links)."""
    try:
        os.link(source, path)
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
            raise
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.replace(source, path)


def _umask():
    """This process's umask, read without changing it where Linux tells it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it
    os.umask(mask)
    return mask


def read_parameters(path):
    """The parameters `save_png` stored in a PNG."""
    from PIL import Image

    with Image.open(path) as image:
        return json.loads(image.text[METADATA_KEY])
