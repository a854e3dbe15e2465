"""The docs stay true: committed JSON Schemas match the contract's models."""

from __future__ import annotations

from pathlib import Path

from contracts.schemas import render_schemas

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_committed_json_schemas_match_the_contract() -> None:
    for name, content in render_schemas().items():
        path = DOCS / "schemas" / name
        assert path.is_file(), f"{path} missing: run python -m contracts.schemas --out docs/schemas"
        assert path.read_bytes() == content, f"{path} is stale: run python -m contracts.schemas --out docs/schemas"


def test_settings_reference_is_current() -> None:
    from edgeloop.settings_doc import render_settings_doc

    path = DOCS / "settings.md"
    assert path.read_text() == render_settings_doc(), "docs/settings.md is stale: python -m edgeloop.settings_doc"
