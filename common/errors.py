"""The toolkit's one error type: `ToolkitError` and its kinds mean "the input or the environment is wrong", not
"the code is wrong". `common.cli.run` ends a run on one of them with one line, `error: …`, and exit status 2; every
other exception is a bug and keeps its traceback.

Each kind also derives from the built-in exception it refines (a bad value is a ValueError, a missing file a
FileNotFoundError), so callers that catch the built-in ones keep working. A message names the file, key or item at
fault and says what to do.
"""


class ToolkitError(Exception):
    """Base of every error a user can fix."""


class InputError(ToolkitError, ValueError):
    """A value, file content or artefact the toolkit refuses."""


class ConfigError(InputError):
    """A config file or override that is malformed, unknown or out of range."""


class MissingError(ToolkitError, FileNotFoundError):
    """A file or folder the run needs is not there."""


class OutputError(ToolkitError, OSError):
    """An output that cannot be written (a read-only folder, a full disk)."""


class DivergedError(ToolkitError, FloatingPointError):
    """A run whose loss or parameters became non-finite (or left their range): its settings diverge."""


class BusyError(ToolkitError, RuntimeError):
    """A resource held by another run, or a model or tool that cannot do what is asked of it."""
