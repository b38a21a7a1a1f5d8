"""The Dify marketplace API, as far as the store uses it.

Assumed from Dify's own client (api/core/helper/marketplace.py) and the marketplace's
public documents; MARKETPLACE_URL is the API base (Dify's MARKETPLACE_API_URL):

- download:  GET {base}/api/v1/plugins/download?unique_identifier=<author/name:version@checksum>
             answers the .difypkg bytes.
- latest:    GET {base}/api/v1/plugins/{author}/{name}
             answers {"data": {"plugin": {"latest_version": ..., "latest_package_identifier": ...}}}.
- a version: GET {base}/api/v1/plugins/{author}/{name}/{version}
             answers {"data": {"version": {"version": ..., "unique_identifier": ...}}}.

A resolved identifier must match the daemon's pattern and the author, name (and version)
asked for, so a surprising answer cannot point the download at another plugin.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from daemon.redact import hide_password
from daemon.store.download import Downloader
from daemon.store.errors import InvalidIdentifier, MarketplaceError, NotConfigured
from daemon.store.identifier import PluginIdentifier, PluginReference, parse


class Marketplace:
    def __init__(self, base_url: str, downloader: Downloader) -> None:
        self.base_url = base_url.rstrip("/")
        self.downloader = downloader

    def _base(self) -> str:
        if not self.base_url:
            raise NotConfigured("MARKETPLACE_URL is empty: upload packages with PUT /internal/plugins/{id}")
        return self.base_url

    def download_url(self, identifier: PluginIdentifier) -> str:
        return f"{self._base()}/api/v1/plugins/download?unique_identifier={quote(str(identifier), safe='')}"

    def document_url(self, reference: PluginReference) -> str:
        url = f"{self._base()}/api/v1/plugins/{reference.author}/{reference.name}"
        return f"{url}/{reference.version}" if reference.version else url

    async def resolve(self, reference: PluginReference) -> tuple[PluginIdentifier, int]:
        """The unique identifier the marketplace publishes for `reference`: (identifier, attempts)."""
        document, attempts = await self.downloader.fetch_json(self.document_url(reference))
        url = hide_password(self.document_url(reference))  # as shown in errors
        path = (
            ("data", "version", "unique_identifier")
            if reference.version
            else ("data", "plugin", "latest_package_identifier")
        )
        text = _dig(document, path)
        if not isinstance(text, str):
            raise MarketplaceError(f"{url} did not answer {'.'.join(path)}", url=url, attempts=attempts)
        try:
            identifier = parse(text)
        except InvalidIdentifier:
            raise MarketplaceError(
                f"{url} answered {text[:200]!r}, not a valid unique identifier", url=url, attempts=attempts
            ) from None
        if not reference.matches(identifier):
            raise MarketplaceError(f"{url} answered {identifier} for {reference}", url=url, attempts=attempts)
        return identifier, attempts


def _dig(document: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document
