"""The errors a user can cause, one base class for all of them (standard library only).

Every package may import this module (it imports nothing), so a data command can name
its errors without importing torch or Lightning. The CLI prints any ``RecsysError`` as
one line and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RecsysError(Exception):
    """Base of every user-facing error: bad input, config, artifact or run state."""


class ConfigError(RecsysError, ValueError):
    """A run or data config is malformed; the message names the file and the key."""


class DataError(RecsysError, ValueError):
    """Raw or built data is unusable (missing, truncated, too many rejected rows, ...)."""


class CheckpointError(RecsysError, ValueError):
    """A weights file, model.json or run directory is missing, corrupted, or does not fit."""


class NonFiniteLossError(RecsysError, FloatingPointError):
    """A training loss or validation metric became NaN or infinite; names the step."""
