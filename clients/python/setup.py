"""Refuse to build the client without its generated protobuf modules (run generate.py)."""

from pathlib import Path

from setuptools import setup

GEN = Path(__file__).resolve().parent / "src" / "registry_client" / "_gen" / "registry" / "v1"
if not (GEN / "citizen_pb2.py").exists():
    raise SystemExit(
        "registry_client: generated code missing; run `python generate.py` (needs grpcio-tools)"
    )

setup()
