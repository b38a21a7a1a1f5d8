"""`.plugin.sha256`: written for complete plugin folders, checked before a promotion."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.store import workdirs
from tests.support.marketplace import make_plugin, make_workdir

pytestmark = pytest.mark.timeout(30)


def write_manifest(folder: Path) -> bytes:
    content = workdirs.render(workdirs.digest_tree(str(folder)))
    (folder / workdirs.MANIFEST_NAME).write_bytes(content)
    return content


def test_the_manifest_covers_the_plugin_files_but_not_the_venv_or_bytecode(tmp_path: Path) -> None:
    folder = make_workdir(tmp_path, make_plugin())
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "main.cpython-312.pyc").write_bytes(b"pyc")
    content = write_manifest(folder).decode()
    paths = [line.split("  ", 1)[1] for line in content.splitlines()]
    assert paths == sorted(["manifest.yaml", "main.py", "provider/demo.yaml", "_assets/icon.svg"])
    assert workdirs.check(str(folder), "x").status == "ok"


def test_a_changed_or_missing_file_fails_the_check_and_an_extra_one_is_only_listed(tmp_path: Path) -> None:
    folder = make_workdir(tmp_path, make_plugin())
    write_manifest(folder)
    (folder / "main.py").write_text("tampered")
    (folder / "provider" / "demo.yaml").unlink()
    (folder / "runtime.log").write_text("written by the plugin")
    (folder / ".venv" / "lib.py").write_text("venv changes are not covered")
    result = workdirs.check(str(folder), "langgenius/x")
    assert result.status == "failed"
    assert result.changed == ["main.py"]
    assert result.missing == ["provider/demo.yaml"]
    assert result.extra == ["runtime.log"]


def test_folders_are_found_by_the_daemons_naming_and_classified(tmp_path: Path) -> None:
    done = make_workdir(tmp_path, make_plugin(name="done"))
    make_workdir(tmp_path, make_plugin(name="fresh"))
    make_workdir(tmp_path, make_plugin(name="half"), complete=False)
    write_manifest(done)
    (tmp_path / ".uv-cache" / "x").mkdir(parents=True)
    (tmp_path / "langgenius" / "not-a-plugin").mkdir()
    os.symlink(done, tmp_path / "langgenius" / f"linked-0.0.1@{'a' * 64}")
    report = workdirs.check_all(str(tmp_path)).to_json()
    assert report["ok"] == 1 and report["failed"] == []
    assert [p.split("-")[0] for p in report["unchecked"]] == ["langgenius/fresh"]
    assert [p.split("-")[0] for p in report["incomplete"]] == ["langgenius/half"]
    assert [p.split("-")[0] for p in workdirs.needing_manifest(str(tmp_path))] == ["langgenius/fresh"]


def test_symlinks_and_odd_names_round_trip(tmp_path: Path) -> None:
    folder = make_workdir(tmp_path, make_plugin())
    (folder / "odd\nname\\x").write_text("odd")
    os.symlink("main.py", folder / "alias.py")
    write_manifest(folder)
    assert workdirs.check(str(folder), "x").status == "ok"
    os.unlink(folder / "alias.py")
    os.symlink("manifest.yaml", folder / "alias.py")
    assert workdirs.check(str(folder), "x").changed == ["alias.py"]


def test_an_unreadable_manifest_is_a_failure(tmp_path: Path) -> None:
    folder = make_workdir(tmp_path, make_plugin())
    (folder / workdirs.MANIFEST_NAME).write_text("not a manifest\n")
    result = workdirs.check(str(folder), "x")
    assert result.status == "failed" and "line 1" in result.detail


def test_a_manifest_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    folder = make_workdir(tmp_path / "w", make_plugin())
    outside = tmp_path / "outside.sha256"
    outside.write_bytes(write_manifest(folder))
    (folder / workdirs.MANIFEST_NAME).unlink()
    os.symlink(outside, folder / workdirs.MANIFEST_NAME)
    result = workdirs.check(str(folder), "x")
    assert result.status == "failed" and "unreadable" in result.detail


def test_a_plugin_folder_swapped_for_a_symlink_is_not_followed(tmp_path: Path) -> None:
    real = make_workdir(tmp_path / "elsewhere", make_plugin())
    write_manifest(real)
    (tmp_path / "w").mkdir()
    os.symlink(real, tmp_path / "w" / "swapped")
    result = workdirs.check(str(tmp_path / "w" / "swapped"), "x")
    assert result.status == "failed" and "unreadable" in result.detail


def test_a_fifo_as_manifest_fails_the_check_without_blocking(tmp_path: Path) -> None:
    folder = make_workdir(tmp_path, make_plugin())
    os.mkfifo(folder / workdirs.MANIFEST_NAME)
    result = workdirs.check(str(folder), "x")  # a blocking open would hang here (the test's timeout)
    assert result.status == "failed" and "not a regular file" in result.detail


def test_a_manifest_beyond_the_size_limit_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_workdir(tmp_path, make_plugin())
    content = write_manifest(folder)
    monkeypatch.setattr(workdirs, "MANIFEST_LIMIT", len(content) - 1)
    result = workdirs.check(str(folder), "x")
    assert result.status == "failed" and f"more than {len(content) - 1}" in result.detail


def test_long_lists_in_a_report_are_cut_and_counted(tmp_path: Path) -> None:
    folder = make_workdir(tmp_path, make_plugin())
    write_manifest(folder)
    for n in range(workdirs.LIST_LIMIT + 5):
        (folder / f"junk{n}.txt").write_text("x")
    body = workdirs.check(str(folder), "x").to_json()
    assert len(body["extra"]) == workdirs.LIST_LIMIT and body["extra_total"] == workdirs.LIST_LIMIT + 5
    assert "missing_total" not in body
