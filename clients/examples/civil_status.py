"""A civil-status system's client: register births and deaths, built from the .proto files alone.

Usage:
    python civil_status.py birth --agency civil-hn --kid k1 --key agency.pem \\
        --name "Nguyễn Văn An" --sex MALE --born 2026-11-20 --province 001
    python civil_status.py death --agency civil-hn --kid k1 --key agency.pem \\
        --pin 001226123456 --died 2026-11-21

Needs: grpcio, grpcio-tools, googleapis-common-protos, joserfc. It compiles the stubs from
../../proto into a temporary directory and signs its token with joserfc, so it shares no code
with the server (which verifies with pyjwt).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"


def compile_stubs(proto_root: Path) -> Path:
    """Generate Python stubs for registry.v1 into a temporary directory."""
    import grpc_tools
    from grpc_tools import protoc

    out = Path(tempfile.mkdtemp(prefix="registry-stubs-"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p) for p in sorted((proto_root / "registry" / "v1").glob("*.proto"))]
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return out


def mint_token(agency: str, kid: str, private_key_pem: str, audience: str) -> str:
    """Sign a 5-minute ES256 agency token with joserfc."""
    from joserfc import jwt
    from joserfc.jwk import ECKey

    key = ECKey.import_key(private_key_pem)
    now = int(time.time())
    claims = {"iss": agency, "aud": audience, "iat": now, "exp": now + 300}
    return jwt.encode({"alg": "ES256", "kid": kid}, claims, key)


def _date(text: str) -> Any:
    from google.type import date_pb2

    year, month, day = (int(part) for part in text.split("-"))
    return date_pb2.Date(year=year, month=month, day=day)


def birth_request(pb: ModuleType, citizen_pb: ModuleType, args: argparse.Namespace) -> Any:
    return pb.RegisterBirthRequest(
        request_id=args.request_id or str(uuid.uuid4()),
        full_name=args.name,
        sex=citizen_pb.Sex.Value(f"SEX_{args.sex}"),
        date_of_birth=_date(args.born),
        place_of_birth="Trạm y tế phường",
        registration_province_code=args.province,
        hometown="Hà Nội",
        ethnicity="Kinh",
        nationality="VN",
        registration_authority="UBND phường",
        registration_number="1/2026",
    )


def death_request(pb: ModuleType, args: argparse.Namespace) -> Any:
    return pb.RegisterDeathRequest(
        request_id=args.request_id or str(uuid.uuid4()),
        pin=args.pin,
        date_of_death=_date(args.died),
        registration_authority="UBND phường",
        registration_number="7/2026",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("command", choices=("birth", "death"))
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--agency", required=True)
    parser.add_argument("--kid", required=True)
    parser.add_argument("--key", required=True, help="the agency's private key (PEM)")
    parser.add_argument("--audience", default="citizen-registry")
    parser.add_argument("--request-id", default=None, help="idempotency key (default: new UUID)")
    parser.add_argument("--name", help="birth: the child's full name")
    parser.add_argument("--sex", choices=("MALE", "FEMALE"), help="birth: the child's sex")
    parser.add_argument("--born", help="birth: date of birth YYYY-MM-DD")
    parser.add_argument("--province", help="birth: 3-digit registration province code")
    parser.add_argument("--pin", help="death: the deceased's PIN")
    parser.add_argument("--died", help="death: date of death YYYY-MM-DD")
    args = parser.parse_args()
    needed = ("name", "sex", "born", "province") if args.command == "birth" else ("pin", "died")
    missing = [f"--{name}" for name in needed if getattr(args, name) is None]
    if missing:
        parser.error(f"{args.command} needs {', '.join(missing)}")

    sys.path.insert(0, str(compile_stubs(PROTO_ROOT)))
    import grpc

    pb = importlib.import_module("registry.v1.civil_registration_service_pb2")
    pb_grpc = importlib.import_module("registry.v1.civil_registration_service_pb2_grpc")
    citizen_pb = importlib.import_module("registry.v1.citizen_pb2")

    token = mint_token(args.agency, args.kid, Path(args.key).read_text(), args.audience)
    metadata = (("authorization", f"Bearer {token}"), ("x-purpose", "civil-status registration"))
    with grpc.insecure_channel(args.target) as channel:
        stub = pb_grpc.CivilRegistrationServiceStub(channel)
        try:
            if args.command == "birth":
                call = stub.RegisterBirth(
                    birth_request(pb, citizen_pb, args), metadata=metadata, timeout=10
                )
            else:
                call = stub.RegisterDeath(death_request(pb, args), metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            print(json.dumps({"error": error.code().name, "message": error.details()}))
            return 1
    citizen = call.citizen
    print(
        json.dumps(
            {
                "pin": citizen.pin,
                "replayed": call.replayed,
                "full_name": citizen.full_name,
                "status": citizen_pb.CitizenStatus.Name(citizen.status),
            },
            ensure_ascii=False,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
