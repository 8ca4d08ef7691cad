"""Running the ``qc`` command line in subprocesses: the installed script, and many commands cheaply.

Every ``qc`` process imports TVM at start-up (about 5 s of CPU), which makes one process per error case too
slow for a module of some twenty cases. :func:`run_batch` therefore starts one helper process (this file run
as a script) that imports ``qcompiler.cli`` and TVM once, then forks a child per command. Each child calls
the entry point the ``qc`` script calls, ``qcompiler.cli.main()``, with its own ``sys.argv``, stdout,
stderr and exit status, and prints an uncaught exception as Python would (a ``Traceback``). :func:`run_qc`
runs the installed script itself; a test checks that both report an error identically.

Named ``cli_testkit`` (not ``helpers``) because test folders are not packages and helper module names must
be unique across ``tests/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

#: the installed ``qc`` script of this environment.
QC = Path(sys.executable).parent / "qc"


@dataclass(frozen=True)
class Result:
    """What one ``qc`` command did."""

    returncode: int
    stdout: str
    stderr: str


def _env(wide: bool = True) -> dict[str, str]:
    """The environment of a ``qc`` run: a wide terminal keeps rich from wrapping messages mid-phrase;
    ``wide=False`` leaves the width to qc, as when its output goes to a pipe or a file."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return {**env, "COLUMNS": "250"} if wide else env


def run_qc(*args: str, cwd: Path, wide: bool = True) -> Result:
    """Run the installed ``qc`` script with ``args`` in ``cwd`` (``wide``: see :func:`_env`)."""
    done = subprocess.run([str(QC), *args], cwd=cwd, env=_env(wide), capture_output=True, text=True, timeout=300)
    return Result(done.returncode, done.stdout, done.stderr)


def run_batch(commands: dict[str, Sequence[str]], cwd: Path) -> dict[str, Result]:
    """Run each ``qc`` command (name -> arguments) in ``cwd``, one forked child each; name -> result."""
    done = subprocess.run([sys.executable, __file__], input=json.dumps({k: list(v) for k, v in commands.items()}),
                          cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the qc batch runner failed:\n{done.stderr}")
    return {name: Result(**fields) for name, fields in json.loads(done.stdout).items()}


def _exit_status(code: object) -> int:
    """The exit status Python gives ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _child(main, args: list[str]) -> None:
    """In the forked child: run ``qc args`` as the script would, then exit with its status."""
    status = 1
    try:
        sys.argv = [str(QC), *args]
        main()
        status = 0
    except SystemExit as stop:
        status = _exit_status(stop.code)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _run_forked(main, args: list[str]) -> dict:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            _child(main, args)
        _, wait_status = os.waitpid(pid, 0)
        texts = []
        for stream in (out, err):
            stream.seek(0)
            texts.append(stream.read().decode(errors="replace"))
    return asdict(Result(os.waitstatus_to_exitcode(wait_status), *texts))


def _serve() -> None:
    """Read ``{name: args}`` as JSON on stdin; write ``{name: result}`` as JSON on stdout."""
    commands = json.loads(sys.stdin.read())
    import qcompiler.api  # noqa: F401  (imports TVM once, before forking)
    from qcompiler.cli import main

    results = {name: _run_forked(main, args) for name, args in commands.items()}
    sys.stdout.write(json.dumps(results))


if __name__ == "__main__":
    _serve()
