"""The plugin store: packages fetched, uploaded, verified and catalogued beside the replicated storage.

`PluginStore` (store.py) is the service; `routes.store_app` is its HTTP sub-application (mounted at
/internal, opening and closing the store); `factory.make_store` builds it from the Config for the server.
"""
