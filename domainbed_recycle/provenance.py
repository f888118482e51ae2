"""What every run records about the software that produced it: versions and git commit."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

_PACKAGES = ("torch", "torchvision", "numpy", "pandas", "domainbed-recycle")


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """Commit of the source tree this package was imported from ('+dirty' if modified), else None."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """Versions of python and of the packages whose behaviour changes results."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
