"""Confinement of task paths and globs to the fleet root, on real files and real symlinks."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.errors import ConfigError
from coordinator.paths import confine, expand_globs


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "fleet"
    (base / "docs" / "deep").mkdir(parents=True)
    (base / "docs" / "a.md").write_text("a")
    (base / "docs" / "b.md").write_text("b")
    (base / "docs" / "deep" / "c.md").write_text("c")
    (base / "docs" / ".hidden.md").write_text("h")
    (base / "notes.txt").write_text("n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("s")
    return base


def test_confine_keeps_paths_inside(root: Path) -> None:
    assert confine(root, "docs/a.md", what="workdir") == (root / "docs" / "a.md").resolve()
    assert confine(root, ".", what="workdir") == root.resolve()
    assert confine(root, "docs/../notes.txt", what="workdir") == (root / "notes.txt").resolve()
    assert confine(root, "not/yet/created", what="workdir") == (root / "not" / "yet" / "created").resolve()


def test_confine_accepts_an_absolute_path_inside(root: Path) -> None:
    assert confine(root, str(root / "docs"), what="workdir") == (root / "docs").resolve()


@pytest.mark.parametrize("rel", ["..", "../outside", "docs/../../outside/secret.txt"])
def test_confine_rejects_dotdot(root: Path, rel: str) -> None:
    with pytest.raises(ConfigError) as info:
        confine(root, rel, what="workdir")
    assert info.value.key == "workdir"
    assert "outside the fleet root" in str(info.value)


def test_confine_rejects_absolute_outside(root: Path) -> None:
    with pytest.raises(ConfigError, match="'/etc' is outside the fleet root"):
        confine(root, "/etc", what="workdir")


def test_confine_rejects_symlink_out(root: Path, tmp_path: Path) -> None:
    (root / "leak").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(ConfigError, match="leads through a symlink"):
        confine(root, "leak", what="workdir")
    with pytest.raises(ConfigError, match="leads through a symlink"):
        confine(root, "leak/secret.txt", what="context")


def test_confine_allows_symlink_that_stays_inside(root: Path) -> None:
    (root / "alias").symlink_to(root / "docs", target_is_directory=True)
    assert confine(root, "alias/a.md", what="context") == (root / "docs" / "a.md").resolve()


def test_confine_reports_symlink_loop(root: Path) -> None:
    (root / "loop").symlink_to(root / "loop")
    with pytest.raises(ConfigError):
        confine(root, "loop", what="workdir")


def test_confine_via_symlinked_root(root: Path, tmp_path: Path) -> None:
    alias = tmp_path / "alias-root"
    alias.symlink_to(root, target_is_directory=True)
    assert confine(alias, "docs", what="workdir") == (root / "docs").resolve()


def test_expand_globs_order_and_dedup(root: Path) -> None:
    found = expand_globs(root, ["docs/b.md", "docs/*.md", "**/*.md"], what="context")
    names = [p.relative_to(root.resolve()).as_posix() for p in found]
    assert names == ["docs/b.md", "docs/a.md", "docs/deep/c.md"]


def test_expand_globs_files_only_and_no_hidden(root: Path) -> None:
    found = expand_globs(root, ["docs/*"], what="context")
    assert [p.name for p in found] == ["a.md", "b.md"]


def test_expand_globs_no_match_names_the_pattern(root: Path) -> None:
    with pytest.raises(ConfigError, match="'docs/\\*.rst' matches no file"):
        expand_globs(root, ["docs/*.md", "docs/*.rst"], what="context")
    assert expand_globs(root, ["docs/*.rst"], what="context", missing_ok=True) == []


@pytest.mark.parametrize(("pattern", "reason"), [
    ("/etc/*", "is absolute"),
    ("~/secret", "is absolute"),
    ("../outside/*", "climbs out"),
    ("docs/../../outside/*", "climbs out"),
    ("", "empty pattern"),
])
def test_expand_globs_rejects_escaping_patterns(root: Path, pattern: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        expand_globs(root, [pattern], what="context")
    assert info.value.key == "context"


def test_expand_globs_dotdot_that_stays_inside_is_fine(root: Path) -> None:
    assert [p.name for p in expand_globs(root, ["docs/deep/../a.md"], what="context")] == ["a.md"]


def test_expand_globs_rejects_symlink_out(root: Path, tmp_path: Path) -> None:
    (root / "docs" / "leak.md").symlink_to(tmp_path / "outside" / "secret.txt")
    with pytest.raises(ConfigError, match="leads through a symlink"):
        expand_globs(root, ["docs/*.md"], what="context")


def test_expand_globs_symlink_inside_is_fine(root: Path) -> None:
    (root / "docs" / "z-link.md").symlink_to(root / "notes.txt")
    found = expand_globs(root, ["docs/*.md"], what="context")
    assert found[-1] == (root / "notes.txt").resolve()
