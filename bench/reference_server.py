"""The reference of issue 4: a bare grpc.aio server doing one asyncpg point query per call.

Deliberately plain, as the issue describes it: the default asyncio event loop,
`asyncpg.create_pool(dsn)` with its default settings (10 connections, reset query on every
release, no prepared-statement tuning), no authentication, no audit, no validation beyond what
the query needs. It serves only registry.v1.IdentityService/VerifyIdentity and answers
MATCH / NO_MATCH / NOT_FOUND by comparing the full name and sex as given.

    python -m bench.reference_server --dsn postgresql://... --listen 127.0.0.1:PORT

prints `reference listening on HOST:PORT` once it serves, and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import asyncpg
import grpc

from registry.v1 import identity_service_pb2 as pb

SERVICE = "registry.v1.IdentityService"
_QUERY = (
    "SELECT full_name, birth_year, birth_month, birth_day, sex, status FROM citizens WHERE pin = $1"
)
_MATCH = pb.VERIFY_RESULT_MATCH
_NO_MATCH = pb.VERIFY_RESULT_NO_MATCH
_NOT_FOUND = pb.VERIFY_RESULT_NOT_FOUND


def _handler(pool: asyncpg.Pool) -> grpc.GenericRpcHandler:
    async def verify_identity(
        request: pb.VerifyIdentityRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyIdentityResponse:
        row = await pool.fetchrow(_QUERY, request.pin)
        if row is None:
            return pb.VerifyIdentityResponse(
                result=_NOT_FOUND, correlation_id=request.correlation_id
            )
        name_ok = row["full_name"] == request.full_name
        sex_ok = row["sex"] == request.sex
        return pb.VerifyIdentityResponse(
            result=_MATCH if name_ok and sex_ok else _NO_MATCH,
            field_matches={"full_name": name_ok, "sex": sex_ok},
            citizen_status=row["status"],
            correlation_id=request.correlation_id,
        )

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "VerifyIdentity": grpc.unary_unary_rpc_method_handler(
                verify_identity,
                request_deserializer=pb.VerifyIdentityRequest.FromString,
                response_serializer=pb.VerifyIdentityResponse.SerializeToString,
            )
        },
    )


async def serve(dsn: str, listen: str) -> None:
    pool = await asyncpg.create_pool(dsn)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handler(pool),))
    port = server.add_insecure_port(listen)
    if port == 0:
        raise SystemExit(f"could not bind {listen}")
    await server.start()
    host = listen.rpartition(":")[0]
    print(f"reference listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
    await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args()
    asyncio.run(serve(args.dsn, args.listen))


if __name__ == "__main__":
    main()
