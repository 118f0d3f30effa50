"""The data server: image datasets uploaded as zips, stored under one directory
(SQLite metadata + one uint8 array per dataset) and served to clients by id.

Workers import only `wire`, `content_hash` and `client` from here; the server
modules (`store`, `ingest`, `app`) never import master or worker code.
"""
