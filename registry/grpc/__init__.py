"""The gRPC edge, the only floor that imports grpc.

The gate, status mapping, proto<->domain conversion and one servicer per service.
"""
