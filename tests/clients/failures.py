"""Failures made on the client's side of a call, for the client's retry tests."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2


class _LostResponse(grpc.RpcError):
    """What a dropped connection looks like to the caller: UNAVAILABLE with RetryInfo."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection reset (simulated)"

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=10**7)))
        status = status_pb2.Status(code=14, message=self.details(), details=[detail])
        return (("grpc-status-details-bin", status.SerializeToString()),)
