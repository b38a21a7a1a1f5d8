"""Identifiers: the daemon's own pattern only, and no identifier addresses a path outside its folder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.store.errors import InvalidIdentifier
from daemon.store.identifier import PATTERN, PluginIdentifier, PluginReference, parse, parse_request
from replication.paths import validate_relpath

pytestmark = pytest.mark.timeout(30)

SUM = "a" * 64


@pytest.mark.parametrize(
    ("text", "author", "name", "version"),
    [
        (f"langgenius/openai:0.0.1@{SUM}", "langgenius", "openai", "0.0.1"),
        (f"openai:1.2@{SUM}", "", "openai", "1.2"),
        (f"a_b-c/x-y_z:10.20.30.40-beta_1@{'0' * 32}", "a_b-c", "x-y_z", "10.20.30.40-beta_1"),
    ],
)
def test_valid_identifiers_parse_into_their_parts(text: str, author: str, name: str, version: str) -> None:
    identifier = parse(text)
    assert (identifier.author, identifier.name, identifier.version) == (author, name, version)
    assert str(identifier) == text == identifier.relpath


@pytest.mark.parametrize(
    "text",
    [
        "",
        f"LangGenius/openai:0.0.1@{SUM}",
        f"../../etc/passwd:0.0.1@{SUM}",
        f"a/b/c:0.0.1@{SUM}",
        f"/etc/openai:0.0.1@{SUM}",
        f"langgenius/openai:0.0.1@{SUM}\n",
        f"langgenius/openai:0.0.1@{SUM}/../../x",
        f"langgenius/openai:0.0.1-é@{SUM}",
        f"langgenius/openai:0.0.1@{'a' * 65}",
        f"langgenius/openai:0.0.1@{'g' * 64}",
        f"langgenius/openai:1@{SUM}",
        "langgenius/openai:0.0.1",
        f"langgenius/open ai:0.0.1@{SUM}",
        f"langgenius/openai:0.0.1@{SUM}\x00",
    ],
)
def test_anything_else_is_refused_with_the_pattern_in_the_message(text: str) -> None:
    with pytest.raises(InvalidIdentifier) as refused:
        parse(text)
    assert PATTERN in str(refused.value)
    assert refused.value.extra["pattern"] == PATTERN


@settings(max_examples=100, deadline=None)
@given(st.from_regex(PATTERN, fullmatch=True))
def test_no_accepted_identifier_can_leave_its_folder(text: str) -> None:
    try:
        identifier = parse(text)
    except InvalidIdentifier:
        return  # from_regex may produce what Python's regex dialect allows and RE2's does not
    rel = validate_relpath(f"plugin_packages/{identifier.relpath}")
    assert ".." not in rel.split("/")
    assert rel.count("/") <= 2


def test_marketplace_references_resolve_later() -> None:
    assert parse_request("langgenius/openai") == PluginReference("langgenius", "openai", None)
    assert parse_request("langgenius/openai:0.0.2") == PluginReference("langgenius", "openai", "0.0.2")
    assert isinstance(parse_request(f"langgenius/openai:0.0.2@{SUM}"), PluginIdentifier)
    with pytest.raises(InvalidIdentifier) as refused:
        parse_request("openai")
    assert PATTERN in str(refused.value) and "reference" in str(refused.value)


def test_a_reference_matches_only_its_own_plugin() -> None:
    reference = PluginReference("langgenius", "openai", "0.0.2")
    assert reference.matches(parse(f"langgenius/openai:0.0.2@{SUM}"))
    assert not reference.matches(parse(f"langgenius/openai:0.0.3@{SUM}"))
    assert not reference.matches(parse(f"evil/openai:0.0.2@{SUM}"))


def test_only_a_sha256_checksum_is_verifiable_and_the_workdir_name_follows_the_daemon() -> None:
    assert parse(f"a/b:1.0@{SUM}").verifiable
    assert not parse(f"a/b:1.0@{'a' * 32}").verifiable
    assert parse(f"a/b:1.0@{SUM}").workdir == f"a/b-1.0@{SUM}"
