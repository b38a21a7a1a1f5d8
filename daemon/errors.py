"""The daemon's root errors: one root for every named failure (from replication/errors.py, which must not
import the daemon), and the one configuration error every command reports the same way.

Each HTTP-facing class is mapped to its problem document in daemon/problems.py, and only there; the CLI
prints a ConfigError (UsageError included) as one line and exits with status 2.
"""

from __future__ import annotations

from replication.errors import HotstandbyError

__all__ = ["ConfigError", "HotstandbyError", "UsageError"]


class ConfigError(HotstandbyError, ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


class UsageError(ConfigError):
    """Bad nodes, key, flags or file given to an operator command: one line and exit status 2."""
