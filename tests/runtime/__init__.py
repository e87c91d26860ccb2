"""registry/runtime: attestation keys, audit checkpoints and writers."""
