"""Model files that ship inside PyPI packages: found without importing the packages (whose code
need not run, and some of whose publishers are anonymous), and joined from their parts into the
model cache."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path


class MissingPackage(RuntimeError):
    """A package that ships a model file is not installed (or not at the version alma needs)."""


class JoinFailed(RuntimeError):
    """The parts did not join into the expected file."""


def package_folder(package: str) -> Path:
    """An installed top-level package's folder (finding a top-level module runs none of it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackage(f"the package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def distribution_file(distribution: str, version: str, path: str) -> Path:
    """A file that the installed distribution `distribution`, at `version`, ships at `path`
    (found through its metadata)."""
    try:
        found = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise MissingPackage(f"the package {distribution} is not installed") from None
    if found.version != version:
        raise MissingPackage(f"{distribution} {found.version} is installed, not {version}")
    file = Path(str(found.locate_file(path)))
    if not file.is_file():
        raise MissingPackage(f"the package {distribution} has no {path}")
    return file


def join_files(parts: Sequence[Path], target: Path, size: int, sha256: str | None = None) -> Path:
    """`parts` concatenated in order into `target`, unless `target` already has its size.
    Written beside it under a name of this process and thread, checked, then renamed into place:
    two processes may join at once, and a crash leaves no half file under the real name."""
    if target.is_file() and target.stat().st_size == size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    building = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}")
    digest = hashlib.sha256()
    try:
        with building.open("wb") as joined:
            for part in parts:
                with part.open("rb") as piece:
                    while chunk := piece.read(1 << 20):
                        digest.update(chunk)
                        joined.write(chunk)
        joined_size = building.stat().st_size
        if joined_size != size:
            raise JoinFailed(
                f"the parts of {target.name} joined into {joined_size} bytes, not {size}"
            )
        if sha256 is not None and digest.hexdigest() != sha256:
            raise JoinFailed(f"the parts of {target.name} joined into a file of another sha256")
        building.replace(target)
    finally:
        building.unlink(missing_ok=True)
    return target
