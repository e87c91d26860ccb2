"""A police card-issuance station links a printed card to the citizen's PIN.

    python card_station.py --agency police-hn --kid k1 --key agency.pem \\
        --pin 001226000123 --serial 000123456789 --issued 2026-11-22 --kind EXCHANGE

Prints the card with the expiry date the registry computed (Law on Identification 2023 art. 21).
The serial is the request id: re-sending the same card never issues it twice.
"""

from __future__ import annotations

import json
import sys

from _connect import client, parser
from registry_client import RegistryError


def main() -> int:
    p = parser("issue a card")
    p.add_argument("--pin", required=True)
    p.add_argument("--serial", required=True)
    p.add_argument("--issued", required=True, help="YYYY-MM-DD")
    p.add_argument("--kind", default="FIRST_ISSUE", choices=("FIRST_ISSUE", "EXCHANGE", "REISSUE"))
    p.add_argument("--authority", default="Cục Cảnh sát QLHC về TTXH")
    args = p.parse_args()
    with client(args, "cấp thẻ căn cước") as registry:
        try:
            card = registry.issue_card(
                args.pin, args.serial, args.issued, args.authority, kind=args.kind,
                request_id=f"card:{args.serial}",
            )  # fmt: skip
        except RegistryError as error:
            bad = [v.field for v in error.field_violations]
            print(json.dumps({"error": error.code.name, "reason": error.reason, "fields": bad}))
            return 1
    expiry = card.expiry_date.isoformat() if card.expiry_date else None  # type: ignore[union-attr]
    print(json.dumps({"serial": card.serial, "state": card.state.name, "expires": expiry}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
