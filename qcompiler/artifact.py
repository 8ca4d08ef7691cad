"""The artifact directory: manifest, integer reference model, QDQ model, compiled library and report.

Layout (format 1)::

    out/
      manifest.json     inputs/outputs with scales and zero points, target, versions, config, file hashes
      model.int.onnx    the integer-only reference model (float only at the boundary Q/DQ)
      model.qdq.onnx    the fake-quantized model the integer model was derived from (for inspection)
      model.so          the compiled library (name from the target's capability table)
      report.json       per-node quantization decisions, op counts, sizes, timings, accuracy if evaluated

The directory is written atomically: everything goes into a hidden sibling directory that is renamed into
place only when complete, so a failed compile never leaves a half-written artifact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from qcompiler.errors import ArtifactError

__all__ = ["FORMAT", "MANIFEST", "atomic_directory", "read_manifest", "file_hashes", "check_hashes"]

FORMAT = 1
MANIFEST = "manifest.json"


@contextlib.contextmanager
def atomic_directory(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a fresh staging directory that becomes ``path`` when the block completes without error.

    An existing ``path`` is an :class:`ArtifactError` unless ``force``; it is replaced only after the new
    content is complete. On error the staging directory is removed and ``path`` is left untouched.
    """
    path = Path(path)
    if path.exists() and not force:
        raise ArtifactError(f"output directory {path} already exists; pass --force (force=True) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private (0700); an artifact is an ordinary directory
    try:
        yield staging
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "previous")
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    """The process's file-creation mask (reading it means setting it; it is restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_hashes(directory: Path, names: list[str]) -> dict[str, str]:
    """SHA-256 of each named file in ``directory``."""
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in names}


def read_manifest(directory: str | Path) -> dict:
    """Read and sanity-check ``manifest.json``; a missing or foreign directory is an :class:`ArtifactError`."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory} is not a qc artifact (no {MANIFEST}); create one with `qc compile`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{path} is corrupt: {error}") from error
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{directory} has artifact format {manifest.get('format')}; this qc reads format {FORMAT}")
    return manifest


def check_hashes(directory: Path, manifest: dict) -> None:
    """Refuse an artifact whose files were modified or removed after compilation."""
    expected = manifest.get("files", {})
    missing = [name for name in expected if not (directory / name).is_file()]
    if missing:
        raise ArtifactError(f"{directory} is incomplete: missing {', '.join(missing)}")
    actual = file_hashes(directory, list(expected))
    changed = [name for name in expected if actual[name] != expected[name]]
    if changed:
        raise ArtifactError(f"{directory}: {', '.join(changed)} changed since compilation (hash mismatch); recompile")
