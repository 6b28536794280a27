"""User-facing errors.

Every problem a user can fix (bad config value, missing or corrupt data, impossible split) is
raised as a ``SplitmixError`` whose message is ONE line naming the bad value and how to fix it.
The CLI prints ``error: <message>`` and exits with status 2, never a traceback, so messages must
stand on their own.
"""


class SplitmixError(Exception):
    """A problem the user can fix; the message is one line that says what and how."""


class ConfigError(SplitmixError):
    """A configuration key or value is invalid (names the key, the value and what is allowed)."""


class DataError(SplitmixError):
    """Data is missing, corrupt or unusable (names the file, checksum, source and the fix)."""
