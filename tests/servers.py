"""What the tests' real servers (Orthanc, PostgreSQL, rsyslog) share: their scripts/*.sh are
run the same way and each writes an ``env`` file of KEY=value lines."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["read_env", "run_script"]


def read_env(path: Path) -> dict[str, str]:
    """The KEY=value lines of a server's env file (values unquoted)."""
    env = {}
    for line in path.read_text().splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip('"')
    return env


def run_script(script: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``bash script args...``, its output captured as text."""
    return subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, timeout=timeout
    )
