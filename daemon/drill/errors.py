"""The drill's own exceptions, in one place (so stoppers.py, kube.py, ssh.py and the steps need not
import each other for them). None leaves the drill: each becomes a failed step in its report."""

from replication.errors import HotstandbyError


class StepFailed(HotstandbyError):
    """A step could not do what it had to; the message says what it saw."""


class StopperError(HotstandbyError):
    """Stopping, starting or checking a node failed; the message says how."""


class HAProxyError(HotstandbyError):
    """The stats socket or page could not be read, or its servers could not be told apart."""
