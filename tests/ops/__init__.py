"""Whole processes as operators run them: the CLI, served processes, workers, replicas,
faults, TLS, status, metrics, tracing, configuration, the package layout and the API docs."""
