"""TLS and mutual TLS with real certificates made here; plaintext only on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from registry.config import ConfigError, Settings
from registry.v1 import civil_registration_service_pb2_grpc as civil_grpc
from tests.conftest import ServerThread, server_settings
from tests.helpers import birth_request, decode

pytestmark = pytest.mark.slow


@dataclass
class Issued:
    key_pem: bytes
    cert_pem: bytes


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class CA:
    """A certificate authority that issues server and client certificates."""

    def __init__(self, name: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, cn: str, sans: list[x509.GeneralName], *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        usage = (
            x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
            if server
            else (x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH)
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(_pem_key(key), cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    directory = tmp_path_factory.mktemp("pki")
    ca = CA("Registry test CA")
    server = ca.issue(
        "registry.test",
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        server=True,
    )
    paths = {}
    for name, data in (
        ("ca.pem", ca.pem),
        ("server.pem", server.cert_pem),
        ("server.key", server.key_pem),
    ):
        path = directory / name
        path.write_bytes(data)
        paths[name] = path
    return {"ca": ca, "paths": paths, "foreign": CA("Someone else's CA")}


def _server(runtime_dsn: str, pki: dict[str, object], *, mutual: bool) -> Iterator[ServerThread]:
    paths: dict[str, Path] = pki["paths"]  # type: ignore[assignment]
    settings = server_settings(
        tls_cert=paths["server.pem"],
        tls_key=paths["server.key"],
        tls_client_ca=paths["ca.pem"] if mutual else None,
    )
    srv = ServerThread(settings, runtime_dsn).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def tls_server(runtime_dsn: str, pki: dict[str, object]) -> Iterator[ServerThread]:
    yield from _server(runtime_dsn, pki, mutual=False)


@pytest.fixture(scope="module")
def mtls_server(runtime_dsn: str, pki: dict[str, object]) -> Iterator[ServerThread]:
    yield from _server(runtime_dsn, pki, mutual=True)


def _channel(target: str, ca: CA, client: Issued | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    return grpc.secure_channel(target, credentials)


def _register(channel: grpc.Channel, agency) -> str:
    stub = civil_grpc.CivilRegistrationServiceStub(channel)
    return stub.RegisterBirth(birth_request(), metadata=agency.metadata(), timeout=10).citizen.pin


def _error(fn, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args)
    return info.value


def test_tls_serves_encrypted_and_refuses_plaintext(tls_server, pki, agency, db):
    ca: CA = pki["ca"]  # type: ignore[assignment]
    with _channel(tls_server.target, ca) as channel:
        pin = _register(channel, agency)
    assert db.fetchval("SELECT count(*) FROM citizens WHERE pin = $1", pin) == 1
    with grpc.insecure_channel(tls_server.target) as plain:
        err = _error(_register, plain, agency)
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_client_refuses_a_server_it_cannot_authenticate(tls_server, pki, agency):
    foreign: CA = pki["foreign"]  # type: ignore[assignment]
    with _channel(tls_server.target, foreign) as channel:
        err = _error(_register, channel, agency)
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_accepts_the_certificate_of_the_agency_named_in_the_token(mtls_server, pki, agency):
    ca: CA = pki["ca"]  # type: ignore[assignment]
    for names in (
        (agency.id, []),
        ("Trạm cấp căn cước", [x509.UniformResourceIdentifier(f"agency:{agency.id}")]),
        ("station-7", [x509.DNSName(agency.id)]),
    ):
        client = ca.issue(names[0], names[1], server=False)
        with _channel(mtls_server.target, ca, client) as channel:
            assert len(_register(channel, agency)) == 12


def test_mtls_refuses_another_agencys_certificate(mtls_server, pki, agency, make_agency, db):
    ca: CA = pki["ca"]  # type: ignore[assignment]
    other = make_agency()
    client = ca.issue(other.id, [], server=False)
    before = db.counts()
    with _channel(mtls_server.target, ca, client) as channel:
        err = _error(_register, channel, agency)
    details = decode(err)
    assert (details.code, details.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CLIENT_CERT_AGENCY_MISMATCH",
    )
    assert details.message == (
        f"the client certificate does not belong to agency {agency.id!r} named in the token "
        "(its subject CN or a SAN must be the agency id)"
    )
    assert db.counts() == before


def test_mtls_refuses_no_certificate_and_foreign_certificates(mtls_server, pki, agency):
    ca: CA = pki["ca"]  # type: ignore[assignment]
    foreign: CA = pki["foreign"]  # type: ignore[assignment]
    with _channel(mtls_server.target, ca) as channel:
        assert _error(_register, channel, agency).code() == grpc.StatusCode.UNAVAILABLE
    stranger = foreign.issue(agency.id, [], server=False)
    with _channel(mtls_server.target, ca, stranger) as channel:
        assert _error(_register, channel, agency).code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_is_refused_on_a_non_loopback_address_unless_allowed(pki):
    paths: dict[str, Path] = pki["paths"]  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="refusing to serve plaintext"):
        Settings(listen="0.0.0.0:50051").check()
    Settings(listen="0.0.0.0:50051", allow_insecure_listen=True).check()
    Settings(
        listen="0.0.0.0:50051", tls_cert=paths["server.pem"], tls_key=paths["server.key"]
    ).check()
    Settings(listen="[::1]:50051").check()
    env = {"REGISTRY_LISTEN": "10.1.2.3:50051"}
    with pytest.raises(ConfigError):
        Settings.from_env(env)
    with pytest.raises(ConfigError, match="must be set together"):
        Settings(tls_cert=paths["server.pem"]).check()
    with pytest.raises(ConfigError, match="CLIENT_CA needs"):
        Settings(tls_client_ca=paths["ca.pem"]).check()


def test_the_client_package_works_over_tls_and_mutual_tls(
    tls_server, mtls_server, pki, agency, registry_client
):
    from tests.conftest import private_pem

    rc = registry_client
    ca: CA = pki["ca"]  # type: ignore[assignment]
    pem = private_pem(agency.private_key)
    station = ca.issue(agency.id, [], server=False)
    cases = (
        (tls_server, grpc.ssl_channel_credentials(root_certificates=ca.pem)),
        (
            mtls_server,
            grpc.ssl_channel_credentials(
                root_certificates=ca.pem,
                private_key=station.key_pem,
                certificate_chain=station.cert_pem,
            ),
        ),
    )
    for server, credentials in cases:
        with rc.RegistryClient(server.target, agency.id, agency.kid, pem, tls=credentials) as c:
            born = c.register_birth(
                full_name="Trần Thị Mai",
                sex=rc.Sex.FEMALE,
                date_of_birth=dt.date(2026, 1, 5),
                registration_province_code="001",
                place_of_birth="Bệnh viện Bạch Mai",
                hometown="Hà Nội",
                ethnicity="Kinh",
                registration_authority="UBND phường Kim Liên",
                registration_number="tls-1",
            )
            answer = c.verify_identity(born.pin, full_name="trần  thị mai")
            assert answer.result is rc.VerifyResult.MATCH

        async def verify(server: Any = server, credentials: Any = credentials, pin: str = born.pin):
            async with rc.AsyncRegistryClient(
                server.target, agency.id, agency.kid, pem, tls=credentials
            ) as c:
                return await c.verify_identity(pin, sex=rc.Sex.FEMALE)

        assert asyncio.run(verify()).result is rc.VerifyResult.MATCH

    # Without the registry's CA the client cannot reach it: the error is UNAVAILABLE, retried
    # and then raised, never answered in plaintext.
    foreign: CA = pki["foreign"]  # type: ignore[assignment]
    with (
        rc.RegistryClient(
            tls_server.target,
            agency.id,
            agency.kid,
            pem,
            tls=grpc.ssl_channel_credentials(root_certificates=foreign.pem),
            max_attempts=1,
            timeout=5,
        ) as c,
        pytest.raises(rc.Unavailable),
    ):
        c.verify_identity("001099000001", sex=rc.Sex.MALE)
