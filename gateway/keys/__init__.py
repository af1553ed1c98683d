"""Virtual API keys: the credential format, the PostgreSQL store, and the cache in front of it."""
