"""The base class of mistakes a user can fix (a config value, a missing file, the wrong machine).

Its message names the field, file or value and says what to do; the CLI prints it as one line.
Anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """A mistake the user can fix; the message says which and how."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the user named (a manifest, a corpus, a font, a notebook) does not exist."""
