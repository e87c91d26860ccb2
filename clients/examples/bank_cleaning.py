"""A bank checks its customer file against the register over one BatchVerify stream.

    python bank_cleaning.py --agency bank-x --kid k1 --key agency.pem customers.csv

customers.csv has a header: id, pin, full_name, date_of_birth (YYYY[-MM[-DD]]), sex.
Writes customers.checked.csv (id, result, which fields differ) and prints a summary. The bank
learns only yes/no per field — nothing it did not already know. Register the agency with a
--miss-budget sized for the file: dirty data means many NO_MATCH answers.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from _connect import client, parser
from registry_client import VerifyRequest


def main() -> int:
    p = parser("verify a customer file")
    p.add_argument("file")
    args = p.parse_args()
    source = Path(args.file)
    with source.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    checks = (
        VerifyRequest(
            pin=row["pin"],
            full_name=row.get("full_name") or None,
            date_of_birth=row.get("date_of_birth") or None,
            sex=row.get("sex") or None,
            correlation_id=row["id"],
        )
        for row in rows
    )
    out = source.with_suffix(".checked.csv")
    summary: dict[str, int] = {}
    with client(args, "làm sạch dữ liệu khách hàng") as registry, out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "result", "differs"])
        for answer in registry.batch_verify(checks):
            result = "INVALID" if answer.error else answer.result.name
            summary[result] = summary.get(result, 0) + 1
            differs = [name for name, same in answer.field_matches.items() if not same]
            writer.writerow([answer.correlation_id, result, " ".join(differs)])
    print(json.dumps({"rows": len(rows), "results": summary, "output": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
