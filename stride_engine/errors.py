"""Errors the engine raises for bad input. Each message names the bad input and what would fix it."""


class StrideError(ValueError):
    """Base class: a problem with what the user gave the engine (not a bug in the engine)."""


class CorpusError(StrideError):
    """A training corpus or query file that cannot be read or is empty."""


class ConfigError(StrideError):
    """A configuration value out of range or inconsistent with the model or corpus."""


class ModelError(StrideError):
    """A model folder that cannot be loaded, or an architecture whose layers cannot be found."""


class StageMismatchError(StrideError):
    """A run directory holds a finished stage built from a different configuration."""


class OutOfMemory(StrideError):
    """A stage that did not fit in the device's (or the machine's) memory; the message names the settings to lower."""


class RunFormatError(StrideError):
    """A run directory laid out by another version of the engine than this one can read."""
