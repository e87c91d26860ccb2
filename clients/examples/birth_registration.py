"""A civil-status office registers a birth and gets the child's PIN at once.

    python birth_registration.py --agency civil-hn --kid k1 --key agency.pem \\
        --name "Nguyễn Thị Mai" --sex FEMALE --born 2026-11-20 --province 001 \\
        --registration-number 0421/2026 [--mother 001190000123] [--request-id ID]

The request id is the office's own reference for the registration (here: derived from the
registration number unless given): sending the same registration again — after a timeout, a
crash, a network error — returns the same PIN (`replayed`) instead of a second one.
"""

from __future__ import annotations

import json
import sys
import uuid

from _connect import client, parser
from registry_client import RegistryError


def main() -> int:
    p = parser("register a birth")
    p.add_argument("--name", required=True)
    p.add_argument("--sex", required=True, choices=("MALE", "FEMALE"))
    p.add_argument("--born", required=True, help="YYYY-MM-DD")
    p.add_argument("--province", required=True, help="3-digit code of the registering province")
    p.add_argument("--registration-number", required=True)
    p.add_argument("--place-of-birth", default="Bệnh viện Phụ sản Hà Nội")
    p.add_argument("--hometown", default="Hà Nội")
    p.add_argument("--ethnicity", default="Kinh")
    p.add_argument("--authority", default="UBND phường")
    p.add_argument("--mother")
    p.add_argument("--father")
    p.add_argument("--request-id")
    args = p.parse_args()
    request_id = args.request_id or str(
        uuid.uuid5(uuid.NAMESPACE_URL, f"birth:{args.agency}:{args.registration_number}")
    )
    with client(args, "đăng ký khai sinh") as registry:
        try:
            child = registry.register_birth(
                args.name, args.sex, args.born, args.province,
                place_of_birth=args.place_of_birth, hometown=args.hometown,
                ethnicity=args.ethnicity,
                registration_authority=args.authority,
                registration_number=args.registration_number,
                mother_pin=args.mother, father_pin=args.father, request_id=request_id,
            )  # fmt: skip
        except RegistryError as error:
            bad = [v.field for v in error.field_violations]
            print(json.dumps({"error": error.code.name, "reason": error.reason, "fields": bad}))
            return 1
    print(json.dumps({"pin": child.pin, "replayed": child.replayed}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
