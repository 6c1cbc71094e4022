"""docs/configuration.md is what imgate.configdoc writes from Config: every key, documented."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from imgate import configdoc
from imgate.config import Config

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_key_has_a_meaning_in_config():
    notes, groups = configdoc._notes()
    keys = [f.name for f in fields(Config)]
    assert [k for k in keys if not notes.get(k)] == [], "comment each key's line in Config"
    assert keys[0] in groups, "Config starts with a group title"


def test_the_page_lists_every_key_once_with_its_default():
    text = configdoc.render()
    for f in fields(Config):
        rows = [line for line in text.splitlines() if line.startswith(f"| `{f.name}` |")]
        assert len(rows) == 1, f.name
    assert '| `tcp` | str | `"127.0.0.1:3101"` | goim over TCP, HOST:PORT |' in text
    assert '| `logic_addrs` | list | `["127.0.0.1:3119"]` |' in text


def test_docs_configuration_is_current():
    assert DOC.read_text() == configdoc.render(), (
        "docs/configuration.md is stale: run `python -m imgate.configdoc > docs/configuration.md`")
