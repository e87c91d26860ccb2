"""docs/api.md is what scripts/proto_docs.py renders from the proto comments (no drift)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_api_reference_matches_the_protos():
    spec = importlib.util.spec_from_file_location("proto_docs", ROOT / "scripts" / "proto_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered = module.render()
    assert "#### IdentityService.VerifyIdentity" in rendered
    assert "| `pin` | string |" in rendered
    committed = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert committed == rendered, "docs/api.md is stale: run `make docs`"
