"""The SQL stores: SQLite and PostgreSQL adapters for the read models and the key store."""
