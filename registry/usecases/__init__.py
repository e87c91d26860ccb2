"""Use cases, one per service: each owns its transaction and calls db/ and rules/."""
