"""Database access: the connection seam, named queries, migrations."""
