"""Entry point: `python server.py` serves the registry (same as `registry serve`)."""

import sys

from registry.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
