"""Fixtures shared by several files of tests/ops."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def work_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="registry-faults-work-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
