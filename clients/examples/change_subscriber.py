"""An agency follows every change in the register, resuming where it stopped.

    python change_subscriber.py --agency tax-office --kid k1 --key agency.pem \\
        --cursor feed.cursor [--limit 100]

Prints one JSON line per event and stores the last sequence processed in the cursor file after
each one: stop it any time (or lose the connection) and the next run resumes exactly after it —
no event missed, none twice.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from _connect import client, parser


def main() -> int:
    p = parser("follow the change feed")
    p.add_argument("--cursor", required=True, help="file holding the last sequence processed")
    p.add_argument("--limit", type=int, default=0, help="stop after this many events")
    args = p.parse_args()
    cursor = Path(args.cursor)
    after = int(cursor.read_text()) if cursor.exists() else 0
    seen = 0
    with client(args, "đồng bộ biến động dân cư") as registry:
        for event in registry.watch_changes(after):
            print(
                json.dumps(
                    {"sequence": event.sequence, "type": event.type.name, "pin": event.pin,
                     "new_pin": event.new_pin},
                ),
                flush=True,
            )  # fmt: skip
            cursor.write_text(str(event.sequence))  # processed: remember it
            seen += 1
            if args.limit and seen >= args.limit:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
