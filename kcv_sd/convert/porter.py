"""Assigning checkpoint tensors to Keras variables, with an audit of both sides.

A converter ports every variable from a named key. Problems are collected,
not raised one at a time, so one error names every missing, unused or
mis-shaped key and every variable no key reached. Nothing is assigned until
the audit passes: a checkpoint that does not fit leaves the model untouched.
"""

import keras
import numpy as np

from kcv_sd.convert.errors import CheckpointError

_SHOWN = 8  # keys listed per kind of problem


class Transpose:
    """A layout change by axis permutation: numpy's (a view) for the shape
    checks, the backend's for the assignment, where it is several times
    faster than numpy's copy (multithreaded cast and transpose)."""

    def __init__(self, axes):
        self.axes = axes

    def __call__(self, array):
        return np.transpose(array, self.axes)

    def assign(self, variable, array):
        variable.assign(keras.ops.transpose(keras.ops.cast(array, variable.dtype), self.axes))


# PyTorch conv weight (out, in, h, w) -> Keras kernel (h, w, in, out).
torch_conv_kernel = Transpose((2, 3, 1, 0))
# PyTorch Linear weight (out, in) -> Keras Dense kernel (in, out).
torch_dense_kernel = Transpose((1, 0))


def _listing(items):
    items = sorted(items)
    shown = ", ".join(items[:_SHOWN])
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return shown + more


class WeightPorter:
    """Hands out a state dict's tensors by key and records what was used.

    Args:
        state_dict: {key: numpy array}, PyTorch layouts.
        source: what the tensors came from, for messages.
        file_key: the name the file itself gives a key, for messages, where
            the converter renamed the file's keys first (original-format
            checkpoints); None: the keys are the file's.
    """

    def __init__(self, state_dict, source, file_key=None):
        self.state_dict = state_dict
        self.source = source
        self.file_key = file_key or (lambda key: key)
        self.unused = set(state_dict)
        self.missing = []
        self.mismatched = []
        self.pending = []  # (variable, value, transform), assigned by `finish`

    def port(self, variable, key, transform=None):
        """Take `state_dict[key]`, through `transform`, for `variable` (assigned by `finish`)."""
        if key not in self.state_dict:
            self.missing.append(self.file_key(key))
            return
        self.unused.discard(key)
        value = self.state_dict[key]
        fits = value.ndim == len(variable.shape)  # layout transforms keep the rank
        converted = value if transform is None or not fits else transform(value)
        if not fits or tuple(converted.shape) != tuple(variable.shape):
            self.mismatched.append(
                f"{self.file_key(key)} {tuple(value.shape)} (needs {tuple(variable.shape)} in Keras layout)"
            )
            return
        self.pending.append((variable, value, transform))

    def finish(self, variables):
        """Assign every ported tensor, or raise `CheckpointError` (assigning
        none) unless every key and every variable was used."""
        problems = []
        if self.missing:
            problems.append(f"missing keys: {_listing(self.missing)}")
        if self.unused:
            problems.append(f"unexpected keys: {_listing(map(self.file_key, self.unused))}")
        if self.mismatched:
            problems.append(f"shape mismatches: {_listing(self.mismatched)}")
        ported = {id(variable) for variable, _, _ in self.pending}
        unassigned = [v.path for v in variables if id(v) not in ported]
        if unassigned and not problems:
            problems.append(f"Keras weights no key maps to: {_listing(unassigned)}")
        if problems:
            raise CheckpointError(
                f"{self.source} does not fit the model: " + "; ".join(problems) + "."
            )
        for variable, value, transform in self.pending:
            if isinstance(transform, Transpose):
                transform.assign(variable, value)
            else:
                variable.assign(np.asarray(value if transform is None else transform(value),
                                           dtype=variable.dtype))
        self.pending = []
