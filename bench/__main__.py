"""`make bench`: run every benchmark and print its figures."""

from __future__ import annotations

import os
import platform

from bench import births, budgets, bulk, cards, imports, scaling, transport, verify


def main() -> None:
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}"
    )
    births.main()
    cards.main()
    verify.main()
    budgets.main()
    imports.main()
    bulk.main()
    transport.main()
    scaling.main()


if __name__ == "__main__":
    main()
