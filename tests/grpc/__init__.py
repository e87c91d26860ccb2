"""RPC behaviour (registry/grpc and what it serves) through a real channel."""
