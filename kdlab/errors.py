"""kdlab's own errors: mistakes in what a user gave (a config value, a file, a model pair) that one line explains.

The command line prints them as `kdlab: <message>` without a traceback (the full traceback goes to the
run's train.log, and to the terminal with HYDRA_FULL_ERROR=1). The message names what is wrong (the
config key, the file, the row) and the fix.
"""


class KdlabError(Exception):
    """An error whose message alone tells the user what to change."""


class ConfigError(KdlabError, ValueError):
    """A config value (a key the user set, or a combination of keys) that cannot work."""


class DataError(KdlabError, ValueError):
    """An input file or dataset that cannot be read as asked (the message names the file and the row)."""


class StorageError(KdlabError, OSError):
    """A file kdlab must write or read back cannot be (a full disk, a read-only or foreign directory, a
    corrupt file): the message names the file, the system's reason and what to do."""
