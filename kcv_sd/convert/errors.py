"""The error a converter raises when a checkpoint does not fit the model."""

from kcv_sd.errors import InvalidArgumentError


class CheckpointError(InvalidArgumentError):
    """A weights file of the wrong kind, family or shape for the model asked for."""
