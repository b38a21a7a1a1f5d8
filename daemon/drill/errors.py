"""The drill's own exception, shared by the stoppers (kept apart so stoppers.py and kube.py need not
import each other)."""

from replication.errors import HotstandbyError


class StopperError(HotstandbyError):
    """Stopping, starting or checking a node failed; the message says how."""
