"""NaN or inf never becomes a black image: what a generation checks after
denoising and after decoding, and how it names the likely cause.

The check is one pass over the latents or pixels. Only when it fails are
the models' weights scanned, to name the first damaged variable and the
file it came from; otherwise the cause is numeric overflow in 16 bits.
"""

import numpy as np

from kcv_sd.errors import NonFiniteError


def _variables(model):
    """A Keras model's or layer's variables, or those of a model wrapper
    (the UNet, a ControlNet) through its functional `model()`."""
    if hasattr(model, "weights"):
        return model.weights
    return model.model().weights


def first_damaged_weight(model):
    """The path of `model`'s first variable holding NaN or inf, or None."""
    for variable in _variables(model):
        if not np.isfinite(np.asarray(variable.numpy(), np.float32)).all():
            return variable.path
    return None


def check_finite(values, stage, models, precision):
    """Raise `NonFiniteError` if `values` (the `stage`: "latents", "pixels")
    hold NaN or inf. `models` are (name, model, source) of every model that
    ran, source saying where its weights came from."""
    if np.isfinite(np.asarray(values)).all():
        return
    for name, model, source in models:
        damaged = first_damaged_weight(model)
        if damaged is not None:
            raise NonFiniteError(
                f"The {stage} hold NaN or inf because the {name}'s weight {damaged} does: "
                f"its weights ({source}) are damaged; download or convert them again.")
    raise NonFiniteError(
        f"The {stage} hold NaN or inf although every weight is finite: an overflow in {precision}; "
        "use precision='float32' (or 'mixed_bfloat16'), a lower guidance or control scale."
    )
