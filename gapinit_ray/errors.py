"""User-facing errors.

Every mistake a user can make (a bad spec, a missing image, a corrupt file, an unreachable cluster)
raises a subclass of :class:`GapinitError`. Its message names the file / field / id and says what to
do; the CLI prints it as one line and exits with code 2. Anything else is our bug and keeps its
traceback.
"""


class GapinitError(Exception):
    """Base class of errors caused by user input; the CLI reports them without a traceback."""


class SpecError(GapinitError):
    """The sweep spec (or a command-line override of it) is invalid."""


class DataError(GapinitError):
    """A data set, annotation file or image is missing, unreadable or malformed."""


class BackboneError(GapinitError):
    """An unknown backbone name, or a checkpoint that cannot be loaded."""


class StorageError(GapinitError, OSError):
    """A file could not be written: the directory is read-only or the disk (or a quota) is full.

    Also an :class:`OSError` (with the original ``errno``), so code that handles I/O errors still does."""
