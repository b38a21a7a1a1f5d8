"""Where the store's folders are, relative to PLUGIN_STORAGE_ROOT, and which of them are replicated.

The plugin daemon's root (/app/storage) holds plugin_packages/, plugin/ and cwd/; the
quarantine (plugin_quarantine/ by default) sits beside them, outside every folder the
daemon scans. A path is replicated when it lies under STORAGE_PATH: the watcher ships
whatever the store writes there, and a replica must leave it to its leader.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from daemon.config import Config
from daemon.store.identifier import PluginIdentifier
from replication.paths import StorageRoot, is_within


@dataclass(frozen=True)
class Layout:
    root: str
    packages: str
    plugins: str
    working: str
    quarantine: str
    """The four folders, relative to `root`."""
    storage_path: str

    @classmethod
    def from_config(cls, config: Config) -> Layout:
        root = config.plugin_storage_root

        def rel(path: str) -> str:
            return os.path.relpath(path, root)

        return cls(
            root=root,
            packages=rel(config.package_dir),
            plugins=rel(config.plugin_dir),
            working=rel(config.working_path),
            quarantine=rel(config.quarantine_dir),
            storage_path=config.storage_path,
        )

    def storage_root(self) -> StorageRoot:
        return StorageRoot(self.root)

    def package(self, identifier: PluginIdentifier) -> str:
        return f"{self.packages}/{identifier.relpath}"

    def installed(self, identifier: PluginIdentifier) -> str:
        return f"{self.plugins}/{identifier.relpath}"

    def absolute(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def is_replicated(self, rel: str) -> bool:
        """`rel` is STORAGE_PATH or lies under it: the watcher ships it, and a replica leaves it alone."""
        return is_within(self.absolute(rel), self.storage_path)

    def replicated(self, rel: str) -> str | None:
        """The file `rel`'s path relative to STORAGE_PATH when the watcher replicates it, else None."""
        path = self.absolute(rel)
        return (
            os.path.relpath(path, self.storage_path)
            if self.is_replicated(rel) and path != self.storage_path
            else None
        )
