"""The plugin store: packages fetched, uploaded, verified and catalogued beside the replicated storage.

`PluginStore` (store.py) is the service; `routes.add_store_routes` puts it on the HTTP API;
`open_store` builds it from the Config for the server.
"""
