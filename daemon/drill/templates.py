"""Stop and start commands as templates: {name}, {host}, {port} and {url} filled with a node's values.

Shared by the local stoppers (stoppers.py) and the SSH stopper (ssh.py), which is loaded only when chosen.
"""

from __future__ import annotations

import re
import shlex

from daemon.drill.config import Target

OUTPUT_LIMIT = 2000
"""Characters of a command's output kept for the report."""

PLACEHOLDER = re.compile(r"\{(name|host|port|url)\}")


def render(template: str, target: Target) -> str:
    """Fill the placeholders in one pass over the template, each value shell-quoted.

    One pass, so a value that itself contains `{url}` (a container named so, say) is inserted as
    it is and never expanded again, inside or outside the quotes around it.
    """
    values = {"name": target.name, "host": target.host, "port": str(target.port), "url": target.url}
    return PLACEHOLDER.sub(lambda match: shlex.quote(values[match[1]]), template)
