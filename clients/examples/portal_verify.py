"""A portal's identity check with the packaged client (``pip install clients/python``).

Usage:
    python portal_verify.py --agency portal-hn --kid k1 --key agency.pem \\
        --pin 001226123456 --name "Nguyễn Văn An" --born 2026-11-20 --sex MALE

Checks the PIN offline first (registry_client.validate_pin), then asks the registry and
prints one JSON line: {"result": "MATCH", "citizen_status": "ALIVE", "field_matches": {...}}.
Exit status: 0 when the registry answered (whatever the answer), 1 on an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from registry_client import RegistryClient, RegistryError, validate_pin


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--agency", required=True)
    parser.add_argument("--kid", required=True)
    parser.add_argument("--key", required=True, help="the agency's private key (PEM)")
    parser.add_argument("--audience", default="citizen-registry")
    parser.add_argument("--purpose", default="xác minh danh tính khi mở tài khoản")
    parser.add_argument("--pin", required=True)
    parser.add_argument("--name", help="full name presented")
    parser.add_argument("--born", help="date of birth presented: YYYY[-MM[-DD]]")
    parser.add_argument("--sex", choices=("MALE", "FEMALE"))
    parser.add_argument("--card", help="serial of the card presented")
    args = parser.parse_args()

    problems = validate_pin(args.pin, args.sex, args.born)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)

    with RegistryClient(
        args.target,
        args.agency,
        args.kid,
        Path(args.key).read_text(),
        audience=args.audience,
        purpose=args.purpose,
    ) as client:
        try:
            answer = client.verify_identity(
                args.pin,
                full_name=args.name,
                date_of_birth=args.born,
                sex=args.sex,
                card_serial=args.card,
            )
        except RegistryError as error:
            print(json.dumps({"error": error.code.name, "reason": error.reason}))
            return 1
    print(
        json.dumps(
            {
                "result": answer.result.name,
                "citizen_status": answer.citizen_status.name,
                "field_matches": answer.field_matches,
                "offline_pin_problems": problems,
            },
            ensure_ascii=False,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
