"""The errors attnkit reports to its user: one class per kind of bad input.

Each is an :class:`AttnkitError` whose message is one line that names the input (a config key and
the file that set it, a data file, a checkpoint, a folder) and says what to do. The ``attnkit``
command prints it as ``attnkit: error: <message>`` and exits with code 2 (``--debug`` shows the
traceback). Library callers catch the class they can handle, or ``AttnkitError`` for all.

Every class also derives from the built-in exception that older callers caught (``ValueError``
for configs and checkpoints, ``RuntimeError`` for data and environments), so nothing that caught
those before stops catching them.
"""

from __future__ import annotations


class AttnkitError(Exception):
    """Bad input or an unusable environment, reported to the user as one line."""


class ConfigError(AttnkitError, ValueError):
    """A config that cannot be used as written; the message names the key and its source."""


class DataError(AttnkitError, RuntimeError):
    """Data on disk (or made in memory) that cannot be used; the message names the file."""


class CheckpointError(AttnkitError, ValueError):
    """A checkpoint that cannot be read, or holds another architecture than the one asked for."""


class EnvError(AttnkitError, RuntimeError):
    """The machine cannot do what was asked: no GPU for ``train.device=cuda``, a folder that
    cannot be written, a missing Jupyter kernel."""


class OutputError(AttnkitError, RuntimeError):
    """An output folder that already holds another run's files (pass ``--overwrite``)."""


class TrainingError(AttnkitError, RuntimeError):
    """Training cannot start or go on; the message says why and what is kept."""


__all__ = [
    "AttnkitError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EnvError",
    "OutputError",
    "TrainingError",
]
