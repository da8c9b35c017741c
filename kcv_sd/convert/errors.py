"""The error a converter raises when a checkpoint does not fit the model
(defined with the project's other errors, which `kcv_sd.weights` shares)."""

from kcv_sd.errors import CheckpointError

__all__ = ["CheckpointError"]
