"""Generated gRPC/protobuf code for registry.v1 (`make proto`); never edited by hand."""
