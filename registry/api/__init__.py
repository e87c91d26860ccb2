"""The gRPC edge: interceptors, proto<->domain conversion, error translation, servicers."""
