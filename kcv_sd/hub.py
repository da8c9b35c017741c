"""Hugging Face Hub repo ids as weights: files downloaded once into the Hub cache.

ControlNets (`kcv_sd.control`) and diffusers SD1.x pipelines
(`kcv_sd.components`) share `hub_file`, so a repo that is unknown, a file it
lacks, or a download that cannot happen (offline with nothing cached) is one
line naming the repo, the file and the fix, as KerasCV's files are
(`kcv_sd.cache`). huggingface_hub is imported on first use only.
"""

import re
from pathlib import Path

from kcv_sd.convert.sd_folder import COMPONENTS
from kcv_sd.errors import WeightsNotFoundError

# Repo ids look like "owner/name"; anything else is taken for a local path.
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# A pipeline's weight files as `kcv_sd.convert.sd_folder` reads them: the
# full .safetensors, else its fp16 variant; pickled .bin files are not fetched.
HUB_SUFFIXES = (".safetensors", ".fp16.safetensors")


def is_repo_id(name):
    """Whether `name` reads as a Hub repo id ("owner/name") and is not a local path:
    a local file or folder of the same name wins."""
    return isinstance(name, (str, Path)) and bool(_REPO_ID.match(str(name))) and not Path(name).exists()


class HubOfflineError(WeightsNotFoundError):
    """A file neither in the Hub cache nor downloadable now."""


def hub_file(repo_id, filename, fallback, required=True, local_only=False):
    """Local path of `filename` in the Hub repo `repo_id`, downloaded once
    into the Hub cache (offline, a cached copy is used; `local_only`: the
    cache alone is looked at).

    Raises `WeightsNotFoundError` whose message ends with `fallback` (what
    to pass instead), `HubOfflineError` for a file neither cached nor
    downloadable; a file the repo lacks gives None unless `required`.
    """
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:
        raise WeightsNotFoundError(
            f"Loading {repo_id!r} by repo id needs huggingface_hub: `pip install huggingface_hub`, "
            f"or pass {fallback}."
        ) from None
    try:
        local = {"local_files_only": True} if local_only else {}
        return Path(huggingface_hub.hf_hub_download(repo_id, filename, **local))
    except errors.LocalEntryNotFoundError:  # before its base class EntryNotFoundError
        raise HubOfflineError(
            f"{filename} of {repo_id!r} is not in the Hugging Face cache and the Hub cannot be reached. "
            f"Check your connection (and HF_HUB_OFFLINE), or pass {fallback}."
        ) from None
    except errors.EntryNotFoundError:
        if not required:
            return None
        raise WeightsNotFoundError(f"{repo_id!r} has no {filename}: pass {fallback}.") from None
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError):
        raise WeightsNotFoundError(
            f"{repo_id!r} is not a Hugging Face repo you can read (unknown, private or gated: "
            f"`hf auth login` for gated ones). Check the repo id, or pass {fallback}."
        ) from None
    except Exception as error:  # network failures and the like
        raise WeightsNotFoundError(
            f"Could not download {filename} of {repo_id!r} ({type(error).__name__}). "
            f"Check the repo id and your connection, or pass {fallback}."
        ) from None


def diffusers_snapshot(repo_id):
    """The local folder (a Hub cache snapshot) of a diffusers SD1.x repo, with
    the files `kcv_sd.convert.sd_folder` reads: each component's weights
    (the full .safetensors, else its .fp16 variant) and config.json.

    A repo whose weights are all cached makes no network call. Once the Hub
    cannot be reached, the remaining files come from the cache alone (each
    unreachable file costs huggingface_hub's retries), and a cached fp16
    variant serves where the full file is not cached.
    """
    try:
        return _snapshot(repo_id, local_only=True)
    except WeightsNotFoundError:
        return _snapshot(repo_id, local_only=False)


def _snapshot(repo_id, local_only):
    fallback = ("a local diffusers folder (none is named so here), a single-file checkpoint, "
                "'kerascv' or 'random'")
    paths = []
    for name, stem in COMPONENTS.items():
        candidates = [f"{name}/{stem}{suffix}" for suffix in HUB_SUFFIXES]
        found = offline = None
        for filename in candidates:
            try:
                found = hub_file(repo_id, filename, fallback, required=False, local_only=local_only)
            except HubOfflineError as error:
                offline, local_only = offline or error, True
            if found is not None:
                break
        if found is None and offline is not None:
            raise offline
        if found is None:
            raise WeightsNotFoundError(
                f"{repo_id!r} has no {name} weights in diffusers' layout ({' or '.join(candidates)}): "
                f"it is not a diffusers SD1.x repo; pass {fallback}."
            )
        paths.append(found)
        try:  # kept with the weights, for diffusers; kcv-sd's models are fixed for SD1.x
            paths.append(hub_file(repo_id, f"{name}/config.json", fallback, required=False,
                                  local_only=local_only))
        except HubOfflineError:
            pass
    roots = {path.parents[1] for path in paths if path is not None}
    if len(roots) != 1:
        raise WeightsNotFoundError(f"{repo_id!r} changed while its files were downloaded: run again.")
    return roots.pop()
