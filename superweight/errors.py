"""Typed errors. Library code raises these; the CLI turns each into one line on stderr and exit code 2.

Every message says what happened and, where there is one, the fix.
"""

from __future__ import annotations


class SuperweightError(Exception):
    """Base class: a problem the user can fix (bad input, missing file, unsupported model)."""

    exit_code = 2


class ModelNotFoundError(SuperweightError):
    """The model spec names nothing that can be loaded here."""


class UnsupportedArchitectureError(SuperweightError):
    """No adapter knows where this model's down-projections are."""


class DataError(SuperweightError):
    """An evaluation data set is missing or in the wrong format."""


class ManifestError(SuperweightError):
    """An integrity manifest is unreadable, of the wrong schema, or for another model."""


class QuantizationError(SuperweightError):
    """An invalid combination of bits, block size and method."""
