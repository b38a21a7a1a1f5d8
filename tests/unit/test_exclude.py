"""EXCLUDE globs (PathMatcher) and READY_MARKERS (ReadyMarkers)."""

from __future__ import annotations

import pytest

from replication.exclude import PathMatcher, ReadyMarkers

PLUGIN_MARKER = "**/.venv/dify/plugin.json"

# --- PathMatcher ----------------------------------------------------------------


def test_excluded_directory_excludes_everything_below_it():
    matcher = PathMatcher(["cwd/.uv-cache"])
    assert matcher.matches("cwd/.uv-cache")
    assert matcher.matches("cwd/.uv-cache/a")
    assert matcher.matches("cwd/.uv-cache/a/b")


def test_excluded_directory_does_not_exclude_a_sibling_sharing_its_name_prefix():
    matcher = PathMatcher(["cwd/.uv-cache"])
    assert not matcher.matches("cwd/.uv-cache2")
    assert not matcher.matches("cwd/.uv-cache2/a")
    assert not matcher.matches("cwd")


def test_pattern_with_a_slash_is_anchored_at_the_storage_root():
    matcher = PathMatcher(["cwd/.uv-cache"])
    assert not matcher.matches("other/cwd/.uv-cache")


def test_leading_and_trailing_slashes_and_blanks_are_ignored():
    matcher = PathMatcher([" /cwd/.uv-cache/ "])
    assert matcher.matches("cwd/.uv-cache/a")
    assert not matcher.matches("x/cwd/.uv-cache")


def test_pattern_without_slash_matches_at_any_depth():
    matcher = PathMatcher(["*.log"])
    assert matcher.matches("app.log")
    assert matcher.matches("a/app.log")
    assert matcher.matches("a/b/c/app.log")
    assert not matcher.matches("a/b/app.log.txt")
    assert not matcher.matches("a/b/applog")


def test_name_pattern_also_excludes_what_is_below_a_matching_directory():
    matcher = PathMatcher(["node_modules"])
    assert matcher.matches("node_modules/x")
    assert matcher.matches("a/node_modules/b/c.js")
    assert not matcher.matches("a/node_modules_old/c.js")


def test_single_star_stays_inside_one_component():
    matcher = PathMatcher(["cwd/*.tmp"])
    assert matcher.matches("cwd/x.tmp")
    assert not matcher.matches("cwd/sub/x.tmp")


def test_question_mark_matches_exactly_one_character_but_not_a_slash():
    matcher = PathMatcher(["cwd/?.txt"])
    assert matcher.matches("cwd/a.txt")
    assert not matcher.matches("cwd/ab.txt")
    assert not matcher.matches("cwd/.txt")
    assert PathMatcher(["a?b"]).matches("x/a_b")
    assert not PathMatcher(["cwd?b"]).matches("cwd/b")


def test_double_star_slash_spans_zero_or_more_directories():
    matcher = PathMatcher(["a/**/b"])
    assert matcher.matches("a/b")
    assert matcher.matches("a/x/b")
    assert matcher.matches("a/x/y/z/b")
    assert not matcher.matches("a/xb")
    assert not matcher.matches("c/a/x/b")


def test_trailing_double_star_matches_everything_inside_but_not_the_directory_itself():
    matcher = PathMatcher(["cache/**"])
    assert matcher.matches("cache/a")
    assert matcher.matches("cache/a/b/c")
    assert not matcher.matches("cache")
    assert not matcher.matches("cache2/a")


def test_leading_double_star_matches_at_the_root_and_below():
    matcher = PathMatcher(["**/__pycache__"])
    assert matcher.matches("__pycache__/x.pyc")
    assert matcher.matches("a/b/__pycache__/x.pyc")
    assert not matcher.matches("a/b/not__pycache__/x.pyc")


def test_bare_double_star_matches_everything():
    matcher = PathMatcher(["**"])
    assert matcher.matches("a")
    assert matcher.matches("a/b/c")


def test_regex_metacharacters_in_patterns_are_literal():
    matcher = PathMatcher(["a+b/(c)|d.e"])
    assert matcher.matches("a+b/(c)|d.e")
    assert not matcher.matches("aab/(c)|dxe")
    assert not matcher.matches("a+b/c")


@pytest.mark.parametrize("patterns", [[], [""], ["  ", "/"]])
def test_empty_matcher_matches_nothing(patterns):
    matcher = PathMatcher(patterns)
    assert not matcher
    assert not matcher.matches("a")
    assert not matcher.matches("a/b/c")


def test_matcher_with_patterns_is_truthy():
    assert PathMatcher(["*.log"])


def test_any_of_several_patterns_matches():
    matcher = PathMatcher(["cwd/.uv-cache", "*.log", "tmp/**"])
    assert matcher.matches("cwd/.uv-cache/x")
    assert matcher.matches("deep/in/a.log")
    assert matcher.matches("tmp/x")
    assert not matcher.matches("cwd/plugins/x.py")


def test_matches_exactly_ignores_parent_directories():
    matcher = PathMatcher(["cwd/.uv-cache"])
    assert matcher.matches_exactly("cwd/.uv-cache")
    assert not matcher.matches_exactly("cwd/.uv-cache/a")


# --- ReadyMarkers -----------------------------------------------------------------


def test_plugin_dir_is_the_part_the_leading_double_star_matched():
    markers = ReadyMarkers([PLUGIN_MARKER])
    assert (
        markers.plugin_dir("langgenius/openai-0.0.1@abc/.venv/dify/plugin.json")
        == "langgenius/openai-0.0.1@abc"
    )


def test_plugin_dir_of_a_dify_identifier_with_colon_and_digest():
    plugin = "cwd/langgenius/openai:0.0.1@" + "ab" * 32
    assert ReadyMarkers([PLUGIN_MARKER]).plugin_dir(f"{plugin}/.venv/dify/plugin.json") == plugin


def test_marker_at_the_storage_root_belongs_to_the_root():
    assert ReadyMarkers([PLUGIN_MARKER]).plugin_dir(".venv/dify/plugin.json") == ""


@pytest.mark.parametrize(
    "path",
    [
        "langgenius/openai-0.0.1@abc/.venv/dify/plugin.json.tmp",
        "langgenius/openai-0.0.1@abc/.venv/dify/other.json",
        "langgenius/openai-0.0.1@abc/.venv/dify",
        "langgenius/openai-0.0.1@abc/venv/dify/plugin.json",
        "langgenius/openai-0.0.1@abc/plugin.json",
        "plugin.json",
        "",
    ],
)
def test_non_marker_gives_none(path):
    assert ReadyMarkers([PLUGIN_MARKER]).plugin_dir(path) is None


def test_no_markers_means_nothing_is_a_marker():
    markers = ReadyMarkers([])
    assert markers.plugin_dir("a/.venv/dify/plugin.json") is None


def test_anchored_marker_pattern_only_matches_from_the_storage_root():
    markers = ReadyMarkers(["plugins/*/READY"])
    assert markers.plugin_dir("plugins/p1/READY") is not None
    assert markers.plugin_dir("other/plugins/p1/READY") is None


def test_marker_pattern_without_slash_matches_at_any_depth():
    # The module docstring: "a pattern without '/' matches a name at any depth (as in .gitignore)".
    markers = ReadyMarkers(["READY"])
    assert markers.plugin_dir("READY") == ""
    assert markers.plugin_dir("a/b/READY") == "a/b"


def test_first_matching_marker_pattern_wins():
    markers = ReadyMarkers([PLUGIN_MARKER, "**/DONE"])
    assert markers.plugin_dir("p/.venv/dify/plugin.json") == "p"
    assert markers.plugin_dir("q/r/DONE") == "q/r"
