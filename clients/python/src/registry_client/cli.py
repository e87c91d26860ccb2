"""`registry-client`: the registry from a terminal, for agency engineers and scripts.

Connection options (or environment): --target (REGISTRY_TARGET, default 127.0.0.1:50051),
--agency (REGISTRY_AGENCY), --kid (REGISTRY_KID), --key (REGISTRY_KEY: the agency's private key
PEM file), --ca FILE (TLS with that CA bundle; --tls for the system roots; plaintext otherwise),
--purpose. Output is human-readable; --json prints one JSON object (or one per line for
streams) for scripts. Errors print their reason and bad fields; exit code 1.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import enum
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .auth import TokenSource
from .client import RegistryClient
from .errors import RegistryError
from .types import Verification, VerifyRequest


def _plain(value: Any) -> Any:
    """A JSON-friendly form of the package's dataclasses and enums."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name != "error"
        }
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


def _show(args: argparse.Namespace, value: Any, human: str) -> None:
    print(json.dumps(_plain(value), ensure_ascii=False) if args.json else human, flush=True)


def _client(args: argparse.Namespace, *, own_connection: bool = False) -> RegistryClient:
    missing = [n for n in ("agency", "kid", "key") if not getattr(args, n)]
    if missing:
        raise SystemExit(f"registry-client: give --{', --'.join(missing)} (or REGISTRY_* env)")
    tls = None
    if args.ca:
        tls = grpc.ssl_channel_credentials(Path(args.ca).read_bytes())
    elif args.tls:
        tls = grpc.ssl_channel_credentials()
    return RegistryClient(
        args.target, args.agency, args.kid, Path(args.key).read_bytes(), tls=tls,
        purpose=args.purpose, own_connection=own_connection,
    )  # fmt: skip


def cmd_keygen(args: argparse.Namespace) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    out = Path(args.out)
    out.write_bytes(private)
    out.chmod(0o600)
    pub = out.with_suffix(".pub")
    pub.write_bytes(public)
    _show(
        args,
        {"private_key": str(out), "public_key": str(pub), "algorithm": "ES256"},
        f"private key (keep it, mode 0600): {out}\npublic key (give it to the registry "
        f"operator for `registry agency add --public-key`): {pub}",
    )


def cmd_token(args: argparse.Namespace) -> None:
    if not (args.agency and args.kid and args.key):
        raise SystemExit("registry-client: give --agency, --kid and --key")
    token = TokenSource(args.agency, args.kid, Path(args.key).read_bytes()).token()
    _show(args, {"token": token}, token)


def cmd_register_birth(args: argparse.Namespace) -> None:
    with _client(args) as client:
        citizen = client.register_birth(
            args.name, args.sex, args.born, args.province,
            place_of_birth=args.place_of_birth, hometown=args.hometown,
            ethnicity=args.ethnicity, registration_authority=args.authority,
            registration_number=args.number, father_pin=args.father, mother_pin=args.mother,
            request_id=args.request_id,
        )  # fmt: skip
    _show(
        args,
        citizen,
        f"PIN {citizen.pin} issued to {citizen.full_name}"
        + (" (replay of an earlier call)" if citizen.replayed else ""),
    )


def cmd_verify(args: argparse.Namespace) -> None:
    with _client(args) as client:
        answer = client.verify_identity(
            args.pin, full_name=args.name, date_of_birth=args.born, sex=args.sex,
            card_serial=args.card,
        )  # fmt: skip
    fields = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in answer.field_matches.items())
    _show(
        args,
        answer,
        f"{answer.result.name} ({fields}); citizen {answer.citizen_status.name}, "
        f"card {answer.card_state.name}",
    )


def cmd_get(args: argparse.Namespace) -> None:
    with _client(args) as client:
        citizen = client.get_citizen(args.pin, args.fields.split(",") if args.fields else None)
    values = {k: v for k, v in _plain(citizen).items() if v not in ("", None, [], 0, False)}
    _show(args, citizen, "\n".join(f"{k}: {v}" for k, v in values.items()))


def cmd_issue_card(args: argparse.Namespace) -> None:
    with _client(args) as client:
        card = client.issue_card(
            args.pin, args.serial, args.issued, args.authority, kind=args.kind,
            request_id=args.request_id,
        )  # fmt: skip
    expiry = card.expiry_date.isoformat() if card.expiry_date else "never"  # type: ignore[union-attr]
    _show(args, card, f"card {card.serial} {card.state.name}, expires {expiry}")


def cmd_watch(args: argparse.Namespace) -> None:
    with _client(args) as client:
        for n, event in enumerate(client.watch_changes(args.after), start=1):
            extra = f" -> {event.new_pin}" if event.new_pin else ""
            _show(args, event, f"{event.sequence}\t{event.type.name}\t{event.pin}{extra}")
            if args.limit and n >= args.limit:
                break


class _Progress:
    """Claims done, rate and ETA: a tqdm bar on a terminal, a plain line every few seconds
    otherwise (a log file gets lines, not carriage returns); nothing with --json."""

    def __init__(self, total: int, *, quiet: bool):
        self._total, self._done, self._quiet = total, 0, quiet
        self._started = self._shown = time.monotonic()
        self._bar: Any = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=" claims", unit_scale=True, dynamic_ncols=True)

    def advance(self, n: int) -> None:
        self._done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if self._quiet or (now - self._shown < 5 and self._done < self._total):
            return
        self._shown = now
        rate = self._done / max(now - self._started, 1e-6)
        eta = (self._total - self._done) / rate if rate > 0 else 0.0
        print(
            f"  {self._done:,}/{self._total:,} verified, {rate:,.0f}/s, ETA {eta:,.0f} s",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> float:
        """Stop; return the claims per second."""
        if self._bar is not None:
            self._bar.close()
        return self._done / max(time.monotonic() - self._started, 1e-6)


_VERIFY_COLUMNS = ("id", "pin", "full_name", "date_of_birth", "sex", "card_serial")


def _verify_rows(source: Path) -> list[list[str]]:
    """The CSV's rows with its columns in _VERIFY_COLUMNS order (absent ones empty); the file
    must name a pin column."""
    with source.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = [name.strip() for name in next(reader, [])]
        if "pin" not in header:
            raise ValueError(f"{source}: no 'pin' column (columns: {', '.join(_VERIFY_COLUMNS)})")
        where = [header.index(name) if name in header else None for name in _VERIFY_COLUMNS]
        return [
            [row[i] if i is not None and i < len(row) else "" for i in where]
            for row in reader
            if row
        ]


def _verify_messages(
    rows: list[list[str]], numbers: Iterable[int], unusable: dict[int, str]
) -> Iterator[Any]:
    """The request of each usable row of ``numbers``, in order; a row whose sex or date of
    birth cannot be sent goes into ``unusable`` (row number -> why) before any later row is
    handed over."""
    for number in numbers:
        row_id, pin, name, born, sex, serial = rows[number]
        request = VerifyRequest(
            pin=pin,
            full_name=name or None,
            date_of_birth=born or None,
            sex=sex or None,
            card_serial=serial or None,
            correlation_id=row_id or str(number),
        )
        try:
            yield request.to_proto()
        except ValueError as exc:
            unusable[number] = str(exc)


def _stream_rows(count: int, block: int, streams: int, stream: int) -> Iterator[int]:
    """The row numbers stream ``stream`` of ``streams`` verifies: every streams-th block of
    ``block`` rows, starting with block ``stream``."""
    for first in range(stream * block, count, streams * block):
        yield from range(first, min(first + block, count))


def _result_line(answer: Verification) -> tuple[str, list[str]]:
    result = "ERROR" if answer.error else answer.result.name
    matches = answer.field_matches.items()
    return result, [
        answer.correlation_id, result,
        ";".join(f"{k}={'yes' if v else 'no'}" for k, v in matches),
        answer.citizen_status.name, answer.card_state.name, str(answer.error or ""),
    ]  # fmt: skip


_SPREAD_TRIES = 32
"""Connections opened at most, beyond one per stream, looking for workers not yet used."""


def _clients_on_distinct_workers(args: argparse.Namespace, count: int) -> list[RegistryClient]:
    """``count`` clients, each on its own connection, spread over the registry's workers.

    The workers of a registry share its port and the kernel gives each new connection to one
    of them, by chance: two connections land on one worker half the time with two workers.
    Each connection is asked which process serves it (RegistryClient.serving_instance); one
    that reaches a worker already used more than another is closed and a new one opened, up
    to _SPREAD_TRIES extra connections in all (a registry behind a load balancer, or with
    fewer workers than streams, is used as it comes).
    """
    if count == 1:
        return [_client(args)]
    clients: list[RegistryClient] = []
    used: dict[str, int] = {}
    workers, spare = 1, _SPREAD_TRIES
    try:
        while len(clients) < count:
            client = _client(args, own_connection=True)
            try:
                instance, host_workers = client.serving_instance()
            except RegistryError:
                # Not known (e.g. UNAVAILABLE while a worker restarts): the connection is used
                # as it comes, and the stream's own retries and errors take over.
                instance, host_workers = "", 1
            except BaseException:
                client.close()
                raise
            workers = max(workers, host_workers)
            # The fewest streams a worker has: 0 while some worker has none yet.
            fewest = min(used.values()) if len(used) >= workers else 0
            if used.get(instance, 0) > fewest and spare > 0:
                spare -= 1
                client.close()
                continue
            used[instance] = used.get(instance, 0) + 1
            clients.append(client)
    except BaseException:
        for client in clients:
            client.close()
        raise
    return clients


def cmd_batch_verify(args: argparse.Namespace) -> None:
    if not 1 <= args.streams <= 16:
        raise ValueError(f"--streams must be 1 to 16, got {args.streams}")
    source = Path(args.file)
    rows = _verify_rows(source)
    out = Path(args.out or source.with_suffix(".results.csv"))
    counts: dict[str, int] = {}
    progress = _Progress(len(rows), quiet=args.json)
    block = args.batch_size
    # Rows are converted as they are sent (gRPC's request threads), so the file streams while
    # earlier batches are being verified. Blocks of --batch-size rows are dealt to the streams
    # in turn, each stream on its own connection (a registry's workers each take whole
    # connections); answers come back in order within a stream, so reading the streams in
    # the same turn gives the rows' order. A row that cannot be sent gets its ERROR line here
    # in its place.
    unusable: dict[int, str] = {}
    clients = _clients_on_distinct_workers(args, args.streams)
    answers = [
        client.verify_many(
            _verify_messages(rows, _stream_rows(len(rows), block, args.streams, i), unusable),
            batch_size=block,
        )
        for i, client in enumerate(clients)
    ]
    waiting: list[Verification | None] = [None] * args.streams  # read, its row not yet reached
    try:
        with out.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                ["id", "result", "field_matches", "citizen_status", "card_state", "error"]
            )
            for number, row in enumerate(rows):
                stream = number // block % args.streams
                if number not in unusable and waiting[stream] is None:
                    # Blocks until the stream's next sent row is answered, which is converted
                    # after this one: whether this row was unusable is known by then.
                    waiting[stream] = next(answers[stream], None)
                answer = waiting[stream]
                if number in unusable:
                    result = "ERROR"
                    line = [row[0] or str(number), result, "", "", "", unusable[number]]
                elif answer is None:
                    raise ValueError("the stream ended before every row was answered")
                else:
                    result, line = _result_line(answer)
                    waiting[stream] = None
                counts[result] = counts.get(result, 0) + 1
                writer.writerow(line)
                progress.advance(1)
    finally:
        for stream_answers in answers:
            stream_answers.close()  # type: ignore[attr-defined]
        for client in clients:
            client.close()
    rate = progress.close()
    if not args.json:
        print(f"  {len(rows):,} verified at {rate:,.0f}/s", file=sys.stderr)
    summary = {"rows": len(rows), "results": counts, "output": str(out)}
    _show(
        args,
        summary,
        f"{len(rows):,} rows: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
        + f"; results in {out}",
    )


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", default=env("REGISTRY_TARGET", "127.0.0.1:50051"))
    common.add_argument("--agency", default=env("REGISTRY_AGENCY"))
    common.add_argument("--kid", default=env("REGISTRY_KID"))
    common.add_argument("--key", default=env("REGISTRY_KEY"), help="private key PEM file")
    common.add_argument("--ca", help="CA bundle PEM: use TLS, trusting it")
    common.add_argument("--tls", action="store_true", help="use TLS with the system roots")
    common.add_argument("--purpose", help="why the data is processed (x-purpose)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    parser = argparse.ArgumentParser(prog="registry-client", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Any, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=text)
        p.set_defaults(func=func)
        return p

    p = command("keygen", cmd_keygen, "create the agency's ES256 key pair")
    p.add_argument("--out", default="agency.pem", help="private key file (.pub beside it)")
    command("token", cmd_token, "print a bearer token (5 minutes)")
    p = command("register-birth", cmd_register_birth, "register a birth, print the new PIN")
    p.add_argument("--name", required=True)
    p.add_argument("--sex", required=True, help="MALE or FEMALE")
    p.add_argument("--born", required=True, help="YYYY-MM-DD")
    p.add_argument("--province", required=True, help="3-digit code, e.g. 001")
    p.add_argument("--place-of-birth", default="")
    p.add_argument("--hometown", default="")
    p.add_argument("--ethnicity", default="Kinh")
    p.add_argument("--authority", default="", help="registering authority")
    p.add_argument("--number", default="", help="birth registration number")
    p.add_argument("--father")
    p.add_argument("--mother")
    p.add_argument("--request-id", help="idempotency key (default: a new UUID)")
    p = command("verify", cmd_verify, "check identity data against the register")
    p.add_argument("pin")
    p.add_argument("--name")
    p.add_argument("--born", help="YYYY, YYYY-MM or YYYY-MM-DD")
    p.add_argument("--sex")
    p.add_argument("--card", help="card serial")
    p = command("get", cmd_get, "read a citizen record (the fields you may see)")
    p.add_argument("pin")
    p.add_argument("--fields", help="comma-separated Citizen fields")
    p = command("issue-card", cmd_issue_card, "issue an identity card")
    p.add_argument("pin")
    p.add_argument("--serial", required=True)
    p.add_argument("--issued", required=True, help="YYYY-MM-DD")
    p.add_argument("--authority", required=True)
    p.add_argument("--kind", default="FIRST_ISSUE", help="FIRST_ISSUE, EXCHANGE or REISSUE")
    p.add_argument("--request-id")
    p = command("watch", cmd_watch, "follow the change feed")
    p.add_argument("--after", type=int, default=0, help="last sequence already processed")
    p.add_argument("--limit", type=int, default=0, help="stop after this many events")
    p = command(
        "batch-verify",
        cmd_batch_verify,
        "verify a CSV in batches over VerifyIdentityBatches streams",
    )
    p.add_argument(
        "--batch-size", type=int, default=2000, help="rows per message (1 to 10,000; default 2000)"
    )
    p.add_argument(
        "--streams",
        type=int,
        default=2,
        help="parallel streams, each on its own connection, on different workers of the "
        "registry where it has them (1 to 16; default 2)",
    )
    p.add_argument("file", help="CSV: id, pin, full_name, date_of_birth, sex, card_serial")
    p.add_argument("--out", help="result CSV (default FILE.results.csv)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit code."""
    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except RegistryError as exc:
        print(f"registry-client: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"registry-client: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
