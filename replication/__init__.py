"""hotstandby replication engine: watcher, journal, wire protocol, sender, receiver."""
