"""Where downloaded files live, and downloads that fail with a usable message."""

import os
from pathlib import Path

import keras

from kcv_sd.errors import WeightsNotFoundError


# "off" turns the graph cache's default off (for a process that patches the layers its graphs were traced from);
# a folder keeps its graphs there (`kcv_sd.graph_cache`).
GRAPH_CACHE_VARIABLE = "KCV_SD_GRAPH_CACHE"
SWITCHED_OFF = ("off", "0", "false", "no")


def keras_home():
    """Keras's base directory, read now so a changed KERAS_HOME is honoured.

    Keras itself reads KERAS_HOME only once, at import time.
    """
    if "KERAS_HOME" in os.environ:
        return Path(os.environ["KERAS_HOME"])
    home = Path.home()
    if not os.access(home, os.W_OK):
        home = Path("/tmp")
    return home / ".keras"


def cached_download(filename, url, sha256, offline_hint=""):
    """Path of `filename` in the Keras cache, downloading it if missing.

    `keras.utils.get_file` checks the sha256. Offline with no cached copy,
    the error names the file, where to put it and where to get it.
    """
    cache_dir = keras_home() / "datasets"
    try:
        return Path(
            keras.utils.get_file(filename, url, file_hash=sha256, cache_dir=str(cache_dir.parent))
        )
    except Exception as error:  # get_file raises bare Exceptions for network failures
        raise WeightsNotFoundError(
            f"{filename} is not cached and could not be downloaded ({type(error).__name__}). "
            f"Put it at {cache_dir / filename} (download it from {url}){offline_hint}."
        ) from None
