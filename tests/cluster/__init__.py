"""The compose deployment: its files, and its services run as processes in network namespaces."""
