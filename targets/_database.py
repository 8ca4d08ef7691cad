"""The files of a tuning database (MetaSchedule's JSON database in a directory of its own): what a build
records of the database it applied, and the check of a ``tuning_db`` target option."""

from __future__ import annotations

import hashlib
import pathlib

from qcompiler.errors import TargetError

__all__ = ["DATABASE_FILES", "check_database", "database_digest", "database_info", "record_count"]

#: the two files of a MetaSchedule JSON database, in a directory of their own.
DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")


def record_count(db_dir: pathlib.Path) -> int:
    """Tuning records in the database in ``db_dir`` (0 when there is none)."""
    path = pathlib.Path(db_dir) / DATABASE_FILES[1]
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0


def database_digest(db_dir: pathlib.Path) -> str:
    """sha256 over the database's two files (what a manifest records)."""
    digest = hashlib.sha256()
    for name in DATABASE_FILES:
        path = pathlib.Path(db_dir) / name
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()


def check_database(target_name: str, tuning_db: str) -> None:
    """Refuse a ``tuning_db`` option naming a directory without a database (a target's validation)."""
    if tuning_db and not (pathlib.Path(tuning_db) / DATABASE_FILES[0]).is_file():
        raise TargetError(
            f"{target_name}: tuning_db={tuning_db!r} holds no tuning database ({DATABASE_FILES[0]} missing); "
            "write one with qc tune"
        )


def database_info(db_dir: pathlib.Path) -> dict:
    """What a library info records of the database a build applied: path, sha256 and record count."""
    return {"path": str(db_dir), "sha256": database_digest(db_dir), "records": record_count(db_dir)}
