"""Reading PyTorch checkpoints into {key: numpy array}, without torch when possible.

`.safetensors` files are read with `safetensors.numpy` (bfloat16 through
ml_dtypes, which Keras imports). Pickled `.pth`,
`.ckpt` and `.bin` files need torch and run a restricted unpickler
(`weights_only=True`); they are read only when the caller allows it.
"""

from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file

from kcv_sd.convert.errors import CheckpointError
from kcv_sd.errors import WeightsNotFoundError

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


def read_state_dict(path, allow_pickle=False, prefixes=None):
    """All tensors of a checkpoint file as numpy arrays, keyed as in the file.

    `prefixes`: read only the keys starting with one of them (a safetensors
    file then reads only those tensors, e.g. the VAE of a whole checkpoint).
    """
    path = check_readable(path, allow_pickle)
    if path.suffix == ".safetensors":
        try:
            return load_file(path) if prefixes is None else _read_safetensors_part(path, tuple(prefixes))
        except SafetensorError as error:  # often a truncated download
            raise CheckpointError(f"{path.name} is not a valid safetensors file: {error}.") from error
    state_dict = _read_pickle(path)
    if prefixes is not None:
        state_dict = {k: v for k, v in state_dict.items() if k.startswith(tuple(prefixes))}
    return state_dict


def check_readable(path, allow_pickle=False):
    """`path` as a `Path`, if it is a checkpoint file `read_state_dict` reads.

    Raises:
        WeightsNotFoundError: no such file.
        CheckpointError: a pickle without allow_pickle, or an unknown type.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"Checkpoint {path} does not exist.")
    if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise CheckpointError(
            f"{path.name} is a pickled PyTorch file. Prefer its .safetensors "
            "version, or pass allow_pickle=True to read it with torch "
            "(weights_only=True)."
        )
    if path.suffix != ".safetensors" and path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path.name}: unknown checkpoint type; expected .safetensors or one of "
            f"{', '.join(PICKLE_SUFFIXES)}."
        )
    return path


def _read_safetensors_part(path, prefixes):
    with safe_open(path, framework="np") as f:
        names = f.keys()  # a list: safe_open objects do not iterate
        return {key: f.get_tensor(key) for key in names if key.startswith(prefixes)}


def _read_pickle(path):
    import torch  # only this path needs torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a bad pickle
        # Not torch's text: it suggests weights_only=False, which would run the file's code.
        raise CheckpointError(
            f"{path.name} cannot be read as a PyTorch checkpoint of tensors ({type(error).__name__}): "
            "it is damaged, or holds objects kcv-sd will not unpickle; use a .safetensors file."
        ) from None
    # Lightning checkpoints (original SD/ControlNet .ckpt) nest the weights.
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    # numpy has no bfloat16: those tensors widen to float32.
    return {
        key: (value.float() if value.dtype == torch.bfloat16 else value).numpy()
        for key, value in checkpoint.items()
        if isinstance(value, torch.Tensor)
    }
