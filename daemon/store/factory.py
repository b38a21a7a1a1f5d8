"""Build the store the server runs: the catalogue Config asks for, a view of the Node, its registry and
promotion check."""

from __future__ import annotations

import os

from daemon.config import Config
from daemon.node import Node
from daemon.store.catalogue import Catalogue
from daemon.store.catalogue_sqlite import SqliteCatalogue
from daemon.store.node_view import RunningNode
from daemon.store.store import PluginStore

SQLITE_FILE = "store.sqlite3"


def make_catalogue(config: Config, node_id: str) -> Catalogue:
    """PostgreSQL when DATABASE_URL is set (shared by the pair), else SQLite in STATE_PATH."""
    if config.database_url:
        from daemon.store.catalogue_postgres import PostgresCatalogue  # late: psycopg is slow to import

        return PostgresCatalogue(config.database_url, config.cluster_name, node_id)
    return SqliteCatalogue(os.path.join(config.state_path, SQLITE_FILE), config.cluster_name, node_id)


def make_store(config: Config, node: Node) -> PluginStore:
    """The node's store, its promotion check added to the node; the API's sub-application opens and
    closes it (daemon/store/routes.py store_app)."""
    store = PluginStore(
        config, make_catalogue(config, node.identity.node_id), RunningNode(node), node.registry
    )
    node.promotion_checks["plugin_workdirs"] = store.promotion_report
    return store
