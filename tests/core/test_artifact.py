"""The artifact directory: atomic writes, hash checks and manifest reading."""

from __future__ import annotations

import json

import pytest

from qcompiler.artifact import FORMAT, MANIFEST, atomic_directory, check_hashes, file_hashes, read_manifest
from qcompiler.errors import ArtifactError


class Boom(Exception):
    """Raised inside an atomic block to simulate a failed compile."""


def entries(directory) -> list[str]:
    """Everything in ``directory``, hidden staging directories included."""
    return sorted(p.name for p in directory.iterdir())


def write_artifact(directory, files: dict[str, str], manifest: dict | None = None):
    """An artifact-like directory holding ``files`` and a manifest with their hashes."""
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)
    manifest = manifest if manifest is not None else {"format": FORMAT, "files": file_hashes(directory, list(files))}
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return manifest


def test_success_renames_the_staging_directory_into_place(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".out.")
        assert not target.exists()
        (staging / "a.txt").write_text("a")
    assert (target / "a.txt").read_text() == "a"
    assert entries(tmp_path) == ["out"]


def test_creates_missing_parents(tmp_path):
    with atomic_directory(tmp_path / "deep" / "out") as staging:
        (staging / "a.txt").write_text("a")
    assert (tmp_path / "deep" / "out" / "a.txt").is_file()


def test_an_error_inside_the_block_leaves_nothing_behind(tmp_path):
    with pytest.raises(Boom), atomic_directory(tmp_path / "out") as staging:
        (staging / "half.txt").write_text("half")
        raise Boom
    assert entries(tmp_path) == []


def test_an_existing_directory_needs_force(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(ArtifactError, match="already exists; pass --force"), atomic_directory(tmp_path / "out"):
        pytest.fail("the block must not run")
    assert entries(tmp_path / "out") == ["old.txt"]
    assert entries(tmp_path) == ["out"]


def test_force_replaces_an_existing_directory(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with atomic_directory(tmp_path / "out", force=True) as staging:
        (staging / "new.txt").write_text("new")
    assert entries(tmp_path / "out") == ["new.txt"]
    assert entries(tmp_path) == ["out"]


def test_a_failed_forced_write_keeps_the_old_directory(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(Boom), atomic_directory(tmp_path / "out", force=True) as staging:
        (staging / "new.txt").write_text("new")
        raise Boom
    assert entries(tmp_path / "out") == ["old.txt"]
    assert entries(tmp_path) == ["out"]


def test_check_hashes_accepts_an_untouched_artifact(tmp_path):
    manifest = write_artifact(tmp_path / "art", {"a.bin": "a", "b.bin": "b"})
    check_hashes(tmp_path / "art", manifest)
    assert read_manifest(tmp_path / "art") == manifest


def test_check_hashes_detects_a_modified_file(tmp_path):
    manifest = write_artifact(tmp_path / "art", {"a.bin": "a", "b.bin": "b"})
    (tmp_path / "art" / "b.bin").write_text("tampered")
    with pytest.raises(ArtifactError, match=r"b\.bin changed since compilation .*recompile"):
        check_hashes(tmp_path / "art", manifest)


def test_check_hashes_detects_a_missing_file(tmp_path):
    manifest = write_artifact(tmp_path / "art", {"a.bin": "a", "b.bin": "b"})
    (tmp_path / "art" / "a.bin").unlink()
    with pytest.raises(ArtifactError, match=r"incomplete: missing a\.bin"):
        check_hashes(tmp_path / "art", manifest)


def test_read_manifest_refuses_a_directory_that_is_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="is not a qc artifact .*qc compile"):
        read_manifest(tmp_path)


def test_read_manifest_refuses_a_corrupt_manifest(tmp_path):
    (tmp_path / MANIFEST).write_text("{")
    with pytest.raises(ArtifactError, match="is corrupt"):
        read_manifest(tmp_path)


def test_read_manifest_refuses_another_format(tmp_path):
    write_artifact(tmp_path / "art", {}, manifest={"format": FORMAT + 1, "files": {}})
    with pytest.raises(ArtifactError, match=f"artifact format {FORMAT + 1}; this qc reads format {FORMAT}"):
        read_manifest(tmp_path / "art")
