"""Connection options shared by the examples: --target --agency --kid --key [--ca]."""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc
from registry_client import RegistryClient


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--agency", required=True)
    p.add_argument("--kid", required=True)
    p.add_argument("--key", required=True, help="the agency's private key (PEM)")
    p.add_argument("--ca", help="CA bundle (PEM) of the registry's TLS certificate")
    return p


def client(args: argparse.Namespace, purpose: str) -> RegistryClient:
    tls = grpc.ssl_channel_credentials(Path(args.ca).read_bytes()) if args.ca else None
    return RegistryClient(
        args.target, args.agency, args.kid, Path(args.key).read_text(), tls=tls, purpose=purpose
    )
