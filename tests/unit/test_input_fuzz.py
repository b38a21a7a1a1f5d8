"""Hostile input, property-checked: relative paths, plugin identifiers and the environment.

Each parser either returns a value that keeps its promise or raises its one documented error;
nothing else. (The wire decoder's own fuzzing is in test_protocol_fuzz.py and test_delta.py;
whole batches are fuzzed in test_batch_fuzz.py.)
"""

from __future__ import annotations

import os
import posixpath
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from daemon.config import Config, ConfigError
from daemon.store.errors import InvalidIdentifier
from daemon.store.identifier import (
    PATTERN,
    REFERENCE_PATTERN,
    PluginIdentifier,
    PluginReference,
    parse,
    parse_request,
)
from replication.errors import ContainmentError
from replication.paths import MAX_NAME_BYTES, MAX_PATH_BYTES, validate_relpath
from tests.support.recording_env import RecordingEnv

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
ROOT = "/srv/storage"

# -- relative paths ------------------------------------------------------------------------------
_nasty_parts = st.sampled_from(
    ["", ".", "..", "...", " ", "a\x00", "\ud800", "é", "x" * 256, "~", "\\", "%2e%2e"]
)
_parts = st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=12)
_path_texts = (
    st.text(max_size=60)
    | st.lists(_parts | _nasty_parts, min_size=1, max_size=8).map("/".join)
    | st.builds(lambda p: "/" + p, st.text(max_size=20))
    | st.sampled_from(["a/" * 2100, "b" * 4097, "../" * 10 + "etc/passwd", "a/./b", "a//b", "a/b/"])
)
_not_strings = st.none() | st.integers() | st.binary(max_size=10) | st.lists(st.text(max_size=3), max_size=3)


def _assert_contained(path: str) -> None:
    """What an accepted path promises: a canonical relative path that stays below any root."""
    parts = path.split("/")
    assert path and "\x00" not in path and not path.startswith("/")
    assert all(p not in ("", ".", "..") for p in parts)
    assert len(os.fsencode(path)) <= MAX_PATH_BYTES
    assert all(len(os.fsencode(p)) <= MAX_NAME_BYTES for p in parts)
    joined = posixpath.normpath(posixpath.join(ROOT, path))
    assert joined.startswith(ROOT + "/") and joined == f"{ROOT}/{path}"


@FUZZ
@given(_path_texts | _not_strings)
def test_validate_relpath_accepts_only_contained_paths_and_refuses_with_containment_error(path: Any) -> None:
    try:
        accepted = validate_relpath(path)
    except ContainmentError:
        return
    assert accepted is path
    _assert_contained(accepted)


@FUZZ
@given(
    st.lists(_parts.filter(lambda p: p not in (".", "..") and len(p.encode()) <= 255), min_size=1, max_size=6)
)
def test_validate_relpath_accepts_every_canonical_path(parts: list[str]) -> None:
    path = "/".join(parts)
    assert validate_relpath(path) == path


@FUZZ
@given(
    st.lists(_parts.filter(lambda p: p not in (".", "..")), min_size=1, max_size=4),
    st.integers(0, 4),
    _nasty_parts.filter(lambda p: p in ("", ".", "..", "a\x00", "\ud800")),
)
def test_one_bad_component_anywhere_refuses_the_whole_path(parts: list[str], where: int, bad: str) -> None:
    parts.insert(min(where, len(parts)), bad)
    with pytest.raises(ContainmentError):
        validate_relpath("/".join(parts))


# -- plugin identifiers ------------------------------------------------------------------------------
SUM = "0123456789abcdef" * 4
_identifier_like = st.builds(
    lambda author, name, version, checksum, sep: f"{author}{sep}{name}:{version}@{checksum}",
    st.text(max_size=10),
    st.text(max_size=10),
    st.text(max_size=10),
    st.text(alphabet="0123456789abcdefg", max_size=70),
    st.sampled_from(["/", "", "//", "/../", "\\"]),
)
_mutated = st.builds(
    lambda text, where, junk: text[:where] + junk + text[where:],
    st.sampled_from(
        [f"langgenius/openai:0.0.1@{SUM}", f"openai:1.2.3-beta@{SUM}", "langgenius/openai:0.0.2"]
    ),
    st.integers(0, 100),
    st.text(max_size=3),
)


def _assert_identifier_safe(identifier: PluginIdentifier, text: str) -> None:
    assert str(identifier) == text == identifier.relpath
    assert validate_relpath(f"plugin_packages/{identifier.relpath}").count("/") <= 2
    assert validate_relpath(identifier.workdir).count("/") <= 1
    assert text.isascii()


@FUZZ
@given(st.text(max_size=120) | _identifier_like | _mutated | st.from_regex(PATTERN, fullmatch=True))
def test_parse_returns_a_contained_identifier_or_refuses_with_the_pattern(text: str) -> None:
    try:
        identifier = parse(text)
    except InvalidIdentifier as exc:
        assert exc.extra["pattern"] == PATTERN
        return
    _assert_identifier_safe(identifier, text)


@FUZZ
@given(
    st.text(max_size=120)
    | _identifier_like
    | _mutated
    | st.from_regex(REFERENCE_PATTERN, fullmatch=True)
    | st.from_regex(PATTERN, fullmatch=True)
)
def test_parse_request_returns_an_identifier_or_a_reference_or_refuses(text: str) -> None:
    try:
        parsed = parse_request(text)
    except InvalidIdentifier as exc:
        assert exc.extra["pattern"] == PATTERN
        return
    if isinstance(parsed, PluginIdentifier):
        _assert_identifier_safe(parsed, text)
        return
    assert isinstance(parsed, PluginReference)
    assert str(parsed) == text and text.isascii()
    assert validate_relpath(f"{parsed.author}/{parsed.name}").count("/") == 1


@FUZZ
@given(_not_strings)
def test_identifier_parsers_refuse_what_is_not_a_string(value: Any) -> None:
    for parser in (parse, parse_request):
        with pytest.raises(InvalidIdentifier):
            parser(value)


# -- configuration ------------------------------------------------------------------------------------


_URL_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/@:]*:([^/@]+)@")


def _url_password(value: str) -> str | None:
    """The password of a URL's user info, even in a URL that does not parse (the second example below).

    Only passwords are secret: a value such as ALLOW_UNAUTHENTICATED=secret is quoted in its error, as it
    should be (hypothesis draws the test's own string constants, "secret" among them)."""
    found = _URL_PASSWORD.search(value)
    return found.group(1) if found else None


def _names_a_path(variable: str) -> bool:
    """Folders, files and globs are quoted as the paths they make (`A://:p@` is a folder `A:/:p@`)."""
    return variable.endswith(("_DIR", "_PATH", "_ROOT", "_FILE", "_HOSTS")) or variable in (
        "EXCLUDE",
        "READY_MARKERS",
    )


def _config_variables() -> list[str]:
    recorder = RecordingEnv({"SERVER_HOST": "127.0.0.1"})  # the defaults need a key beyond loopback
    Config.from_env(recorder)
    return sorted(recorder.asked)


VARIABLES = _config_variables()
_values = (
    st.text(max_size=40)
    | st.sampled_from(
        [
            "",
            " ",
            "0",
            "-1",
            "1e309",
            "nan",
            "inf",
            "true",
            "MASTER",
            "slave",
            "auto",
            "redis",
            "postgres",
            "http://h:1",
            "https://u:p@h:99999",
            "http://[::1",
            "redis://r:6379/0",
            "/tmp",
            "/",
            "relative/dir",
            "a\x00b",
            "/etc/hostname",
            "**,*.tmp,",
            "k" * 8,
            "x\ny" * 5,
        ]
    )
    | st.integers(-(10**20), 10**20).map(str)
    | st.floats(allow_nan=True).map(str)
)


def test_the_fuzzer_knows_the_variables() -> None:
    assert {"ROLE", "SERVER_PORT", "SYNC_TARGET", "TLS_CERT_FILE", "REQUIRE_AUTH", "LEASE_TTL"} <= set(
        VARIABLES
    )


@FUZZ
@given(st.dictionaries(st.sampled_from(VARIABLES), _values, max_size=12))
@example({"MARKETPLACE_URL": "A://["})  # found by this test: urlsplit's ValueError escaped
@example({"SYNC_TARGET": "http://u:secret@[::1"})
@example({"ALLOW_UNAUTHENTICATED": "SECRET"})  # found by this test: quoted, and no password
@example({"MAX_PLUGIN_PACKAGE_SIZE": "A://:0@"})  # found by this test: a URL's password was quoted
@example({"PACKAGE_DIR": ":0@", "ALLOW_UNAUTHENTICATED": "A://:0@"})  # the same text, not a URL, is quoted
@example({"SERVER_HOST": "A://:0@"})  # found by this test: quoted raw where SERVER_KEY is missing
@example({"ROLE": "slave", "SYNC_SOURCE": "http://[::1"})
def test_config_from_any_environment_is_a_config_or_a_config_error(env: dict[str, str]) -> None:
    try:
        config = Config.from_env(env)
    except ConfigError as exc:
        assert str(exc), "a ConfigError always says what is wrong"
        for name, value in env.items():
            password = None if _names_a_path(name) else _url_password(value)
            if not password:
                continue
            # A short password may well be a letter of the message: then only its URL form is looked for.
            echoed = password if len(password) >= 4 else f":{password}@"
            if any(echoed in other for key, other in env.items() if key != name):
                continue  # the same text is another variable's value, which the message may quote
            assert echoed not in str(exc), "a password in a URL is never echoed"
        return
    assert isinstance(config, Config)
    assert config.role in ("master", "slave") and 0 <= config.server_port <= 65535
    assert os.path.isabs(config.storage_path) and os.path.isabs(config.state_path)
    assert not (config.state_path + "/").startswith(config.storage_path + "/")
    assert ("server_key='***'" if config.server_key else "server_key=''") in repr(config)
