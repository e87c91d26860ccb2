"""Pure rules (registry/rules): no server, no database."""
