"""A local Learning Loop server: the Loop's side of the protocol, backed by SQLite and files on disk."""
