"""The status page every node serves (GET /ui): routes.py, the cluster view (cluster.py), the slower
sections (details.py), the last warnings and errors (recent.py) and the page itself (static/)."""
