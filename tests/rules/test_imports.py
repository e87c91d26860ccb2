"""registry.rules.imports: how a rejected record's source_id is reported."""

from __future__ import annotations

from registry.rules.imports import reported_source_id


def test_a_source_id_is_reported_as_sent_up_to_1024_characters() -> None:
    assert reported_source_id("row 7/ä") == "row 7/ä"
    assert reported_source_id("x" * 1024) == "x" * 1024
    assert reported_source_id("y" * 1024 + "z") == "y" * 1024


def test_each_nul_is_reported_as_u_fffd_and_the_length_kept() -> None:
    """PostgreSQL text and jsonb cannot hold NUL, and a batch's rejects are stored."""
    assert reported_source_id("\x00a\x00\x00") == "\ufffda\ufffd\ufffd"
    assert reported_source_id("\x00" * 2000) == "\ufffd" * 1024
