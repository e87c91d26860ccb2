"""Background work of a server process.

Audit writer, caches, change feed, request log, checkpointer, signing keys, PIN secret, metrics
registry and the clock.
"""
