"""hotstandby daemon: configuration, HTTP API, roles and process lifecycle."""

__version__ = "0.1.0"
