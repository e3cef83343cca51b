"""Typed errors. Library code raises these; the CLI turns each into one line on stderr and exit code 2.

Every message says what happened and, where there is one, the fix. An error about one setting names
it in ``option`` by its Python parameter name (``seq_len``), never by a command-line flag: the CLI's
error map renders the flag (``--seq-len``), so library messages stay true outside the CLI. A message
may place the option in its text with ``{option}``.
"""

from __future__ import annotations

from collections.abc import Callable


class SuperweightError(Exception):
    """Base class: a problem the user can fix (bad input, missing file, unsupported model)."""

    exit_code = 2

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.option = option

    def render(self, name_of: Callable[[str], str] | None = None) -> str:
        """The message, with the option named by ``name_of`` (the CLI's flags) or as a parameter."""
        if self.option is None:
            return self.message.replace("{option}", "")
        name = name_of(self.option) if name_of is not None else self.option
        if "{option}" in self.message:
            return self.message.replace("{option}", name)
        return f"{name}: {self.message}"

    def __str__(self) -> str:
        return self.render()


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


class ResultFileError(SuperweightError):
    """A saved result (a scan, a run folder's results.json) is missing, not JSON, or of another kind."""
