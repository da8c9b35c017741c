"""Legacy Keras .h5 weight files (KerasCV's format) onto an ordered list of layers."""

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from kcv_sd.errors import CheckpointError
from kcv_sd.weights import load_legacy_h5


def dense_layers(*units, seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((3,))] + [keras.layers.Dense(n) for n in units])


@pytest.fixture
def saved(tmp_path):
    model = dense_layers(4, 2, seed=0)
    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return model, path


def test_every_layer_gets_the_files_arrays(saved):
    source, path = saved
    target = dense_layers(4, 2, seed=1)
    load_legacy_h5(target.layers, path)
    for ours, theirs in zip(target.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(ours, theirs)


def test_a_wrong_file_leaves_every_layer_as_it_was(saved):
    """The second layer's shapes differ: nothing is assigned, not even the first layer's."""
    _, path = saved
    target = dense_layers(4, 5, seed=1)
    before = [w.copy() for w in target.get_weights()]
    with pytest.raises(ValueError, match=r"layer #1 .* expects weights of shapes \[\(4, 5\), \(5,\)\]"):
        load_legacy_h5(target.layers, path)
    for now, then in zip(target.get_weights(), before):
        np.testing.assert_array_equal(now, then)


@pytest.mark.parametrize("damage", ["empty", "truncated", "not_hdf5", "no_layers"])
def test_a_damaged_file_is_one_line_naming_it(saved, damage):
    _, path = saved
    data = path.read_bytes()
    if damage == "no_layers":
        with h5py.File(path, "w") as f:
            f.create_group("something_else")
    else:
        path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "not_hdf5": b"<html>404</html>"}[damage])
    target = dense_layers(4, 2, seed=1)
    with pytest.raises(CheckpointError, match=f"{path}.*(not a readable Keras weights file|0 weighted layers)"):
        load_legacy_h5(target.layers, path)


def test_damaged_kerascv_files_fail_before_any_model_is_built(tmp_path, monkeypatch):
    import kcv_sd.components

    monkeypatch.setattr(kcv_sd.components, "build_models", lambda *a: pytest.fail("models were built"))
    for name in ("kcv_encoder.h5", "kcv_diffusion_model.h5", "kcv_decoder.h5"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(CheckpointError, match="kcv_encoder.h5 is not a readable Keras weights file"):
        kcv_sd.components.load_components("sd15", str(tmp_path))
