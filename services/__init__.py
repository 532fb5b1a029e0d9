"""Business rules and queries, one module per domain; services flush, never commit."""
