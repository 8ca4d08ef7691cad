"""The aarch64 TVM runtime (libtvm_runtime.so, libtvm_ffi.so), taken from PyPI's aarch64 wheels once.

The versions are those of the installed (host) apache-tvm and apache-tvm-ffi, so the runtime matches the
compiler that exported the library. Only the two shared libraries are unzipped; the C++ headers come from the
host tvm-ffi wheel (they are architecture independent).
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import subprocess
import sys
import tempfile
import zipfile

from qcompiler.errors import TargetError
from qcompiler.targets._cross import cache_dir

__all__ = ["RUNTIME_LIBS", "ensure_aarch64_runtime"]

PLATFORM = "manylinux_2_28_aarch64"

#: distribution -> path of its runtime library inside the wheel.
RUNTIME_LIBS = {"apache-tvm": "tvm/lib/libtvm_runtime.so", "apache-tvm-ffi": "tvm_ffi/lib/libtvm_ffi.so"}


def _pins() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in RUNTIME_LIBS]


def download_command(dest: pathlib.Path) -> list[str]:
    """The ``pip download`` of the aarch64 wheels matching the installed versions."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--platform",
        PLATFORM,
        "--python-version",
        python,
        *_pins(),
        "-d",
        str(dest),
    ]


def ensure_aarch64_runtime(cache: pathlib.Path | None = None) -> pathlib.Path:
    """The directory holding the aarch64 ``libtvm_runtime.so`` and ``libtvm_ffi.so``; downloads them once.

    The directory is ``<cache>/aarch64-runtime/<tvm version>-<ffi version>`` (cache: ``$QC_CACHE_DIR`` or
    ``<repo>/.cache``). Raises :class:`TargetError` with the manual command when the download fails.
    """
    dest = (cache or cache_dir()) / "aarch64-runtime" / "-".join(p.split("==")[1] for p in _pins())
    names = [pathlib.PurePosixPath(member).name for member in RUNTIME_LIBS.values()]
    if all((dest / name).is_file() for name in names):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qc-aarch64-rt-", dir=dest.parent) as scratch:
        work = pathlib.Path(scratch)
        command = download_command(work / "wheels")
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise TargetError(
                "cannot download the aarch64 TVM runtime wheels:\n"
                f"{result.stderr.strip()[-1500:]}\nfix the network or proxy and rerun, or run\n  "
                f"{' '.join(command[2:])}\nand unzip {', '.join(RUNTIME_LIBS.values())} into {dest}"
            )
        staged = work / "libs"
        staged.mkdir()
        for wheel in (work / "wheels").glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                for member in RUNTIME_LIBS.values():
                    if member in archive.namelist():
                        (staged / pathlib.PurePosixPath(member).name).write_bytes(archive.read(member))
        missing = [name for name in names if not (staged / name).is_file()]
        if missing:
            raise TargetError(f"the downloaded aarch64 wheels lack {', '.join(missing)}")
        try:
            staged.rename(dest)  # atomic; a concurrent download may have won the race
        except OSError:
            if not all((dest / name).is_file() for name in names):
                raise
    return dest
