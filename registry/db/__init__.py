"""Database access: the pool, the migration runner and one repository module per aggregate."""
