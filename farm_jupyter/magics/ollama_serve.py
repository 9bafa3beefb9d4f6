"""`%farm ollama start|stop`: `ollama serve` as a background process of this kernel.

Started in its own session (Ctrl-C in the notebook does not reach it), its output in a temporary
log that the errors point to, stopped at exit, at `%unload_ext`, or by `%farm ollama stop`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
from typing import TYPE_CHECKING

from ..display.progress import show_progress
from ..errors import FarmError

if TYPE_CHECKING:
    from ..sessions import Session

HEALTH_WAIT = 30.0  # seconds `ollama serve` gets to answer


def start(session: Session, running: subprocess.Popen[bytes] | None) -> subprocess.Popen[bytes] | None:
    """Start `ollama serve` unless Ollama answers already, then pull the `auto_pull` models.

    Returns the process this kernel runs: the one started now, or `running`.
    """
    from urllib.parse import urlsplit

    host = session.settings.ollama.host
    proc = running
    if running is not None and running.poll() is None:
        print(f"Ollama is already running at {host} (pid {running.pid}, started here)")
    elif _healthy(session):
        print(f"Ollama is already running at {host}")
    else:
        exe = shutil.which("ollama")
        if exe is None:
            raise FarmError("ollama is not installed", hint="see https://ollama.com/download")
        env = dict(os.environ, OLLAMA_HOST=urlsplit(host).netloc)
        log = tempfile.NamedTemporaryFile(prefix="ollama-", suffix=".log", delete=False)  # noqa: SIM115
        proc = subprocess.Popen(
            [exe, "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()
        atexit.register(stop_process, proc)
        deadline = time.monotonic() + HEALTH_WAIT
        while not _healthy(session):
            if proc.poll() is not None:
                raise FarmError(
                    f"`ollama serve` exited with status {proc.returncode}: {_last_line(log.name)}",
                    hint=f"see {log.name}",
                )
            if time.monotonic() > deadline:
                stop_process(proc)
                raise FarmError(
                    f"`ollama serve` did not answer at {host} within {HEALTH_WAIT:.0f}s", hint=f"see {log.name}"
                )
            time.sleep(0.2)
        print(f"Ollama is running at {host} (pid {proc.pid}; log {log.name})")
    for model in session.settings.ollama.auto_pull:
        show_progress(session.load(f"ollama:{model}") or ())
        print(f"ollama:{model}: pulled and loaded")
    return proc


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop the `ollama serve` that `start` ran; one that was not started here is not ours to stop."""
    if proc is None or proc.poll() is not None:
        raise FarmError(
            "no Ollama was started by %farm ollama start in this kernel",
            hint="stop it where it was started (e.g. `systemctl stop ollama`)",
        )
    stop_process(proc)
    print(f"Ollama stopped (pid {proc.pid})")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _healthy(session: Session) -> bool:
    return any(s.healthy for s in session.health(["ollama"]))


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"
