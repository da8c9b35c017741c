"""Errors a user can act on: each message names the problem and the fix.

The CLI turns these into one line on stderr and a non-zero exit code.
"""


class KcvSdError(Exception):
    """Base of every error that is the user's input or environment, not a bug."""


class WeightsNotFoundError(KcvSdError, FileNotFoundError):
    """A weights or vocabulary file is neither cached nor downloadable."""


class InvalidArgumentError(KcvSdError, ValueError):
    """An argument outside what the pipeline supports."""


class MissingDependencyError(KcvSdError, ImportError):
    """An optional package that a feature needs is not installed."""


class NonFiniteError(KcvSdError, ArithmeticError):
    """A generation produced NaN or inf: damaged weights or 16-bit overflow."""


class OutputError(KcvSdError, OSError):
    """An output file cannot be written, or would replace one without leave."""


class CheckpointError(InvalidArgumentError):
    """A weights file of the wrong kind, family or shape for the model asked for."""
