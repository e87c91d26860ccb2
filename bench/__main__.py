"""`make bench`: run every benchmark and print its figures."""

from __future__ import annotations

import os
import platform

from bench import births, budgets, bulk, cards, imports, scaling, sizes, transport, verify


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
    if os.environ.get("BENCH_SIZES"):
        sizes.main()
    else:  # building 10 M citizens takes ~16 minutes and 8.5 GB the first time
        print("bench.sizes skipped: BENCH_SIZES=1000000,10000000 runs it (docs/scaling.md)")


if __name__ == "__main__":
    main()
