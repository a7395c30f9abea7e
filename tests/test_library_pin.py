"""The eventsourcing pin: alma re-implements and reaches into parts of the library, so an upgrade
fails here until someone has re-read those parts of alma against the new library's sources."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
HASHED_AT = "9.5.6"  # the library version whose sources the hashes below were taken from

# (library function or method, sha256 of its source, what in alma depends on it)
OVERRIDDEN = [
    (
        "eventsourcing.application:project_aggregate",
        "e2d05062a4fad31fd02c4fc7e3800f3e046aee37afd8ce8d323bc22f114effab",
        "`replay` in domain/library.py",
    ),
    (
        "eventsourcing.application:Repository.__init__",
        "fecbc95459c1dc5eb5a9a42c4b2887c2bf9256097bb1a5f21b99f455a5353dd2",
        "`CachingApplication.construct_repository` in domain/library.py (on its defaults)",
    ),
    (
        "eventsourcing.application:Repository.get",
        "0ffc6e82b6afa0a04c77fcdefe8163216b201c014b22b85c9552ab3c285de1bb",
        "`CachingRepository.get` and `copy_of` in domain/library.py",
    ),
    (
        "eventsourcing.application:Repository._use_fastforward_lock",
        "1c5705ff55c379ad8539c11c7634b7843bebb0b1a6743539b9238ff906a3f70e",
        "`CachingRepository.last_seen` in domain/library.py",
    ),
    (
        "eventsourcing.application:Repository._disuse_fastforward_lock",
        "4b4da9f10252b1efff963ad459e7159a7888ad57d135e477ef39f5ab59aaa65e",
        "`CachingRepository.last_seen` in domain/library.py",
    ),
    (
        "eventsourcing.application:ProcessingEvent.collect_events",
        "7e3a7e6b1abd2bef334f1ebe7015d887cf935916f87f3c7fbd75127907ab3488",
        "`CachingApplication.save` in domain/library.py",
    ),
    (
        "eventsourcing.application:Application.construct_repository",
        "0b91d1e16616f82c84dfe71062c9b5a9c6ba45adde224b04f311184e963a85ce",
        "`CachingApplication.construct_repository` in domain/library.py",
    ),
    (
        "eventsourcing.application:Application.save",
        "4e9747d14b8fd046df1b9b8ce688be89030978de0c04a632e6a7ec783dc7c5cc",
        "`CachingApplication.save` in domain/library.py",
    ),
    (
        "eventsourcing.application:Application._record",
        "104c6186b29d50595198443b697de23b0dab4344c50d4dca54688b32fce52340",
        "`CachingApplication.save` in domain/library.py",
    ),
    (
        "eventsourcing.application:Application._notify",
        "6b32f9fc4b4cf4552a6e87205e218d3a65403a116435604c75513ce101a83785",
        "`CachingApplication.save` in domain/library.py",
    ),
    (
        "eventsourcing.application:Application._take_snapshots",
        "ae98c5b97ed9a8e3c50f324a01081e277572d192fac93ef738fdb3c053421562",
        "`CachingApplication._take_snapshots` in domain/library.py",
    ),
    (
        "eventsourcing.application:Application.take_snapshot",
        "5f9f473a7692740140b20e3272fa85a63ee36c74cfddb45905829911fc966c48",
        "`CachingApplication._take_snapshots` in domain/library.py",
    ),
    (
        "eventsourcing.persistence:Mapper.to_stored_event",
        "ff9e72e538d73a3a2e6805246b5bec6f544c89f75128f5b587025d2c5baaed0e",
        "`ShreddingMapper` in domain/erasure.py",
    ),
    (
        "eventsourcing.persistence:Mapper.to_domain_event",
        "6ec02f2a3b6e233a81470ac02288628088c400d59ad5054eb9db0ca8f322c972",
        "`ShreddingMapper` in domain/erasure.py and `_event` in domain/transfer.py",
    ),
    (
        "eventsourcing.postgres:PostgresApplicationRecorder.insert_events",
        "f1a98da0239e3ea7462c6b725cd66d0c932fc533814c92e04bf9802ac81ebddf",
        "`FencedPostgresRecorder` in stores/idempotency.py (its hook runs inside the insert's "
        "transaction, before the table lock)",
    ),
    (
        "eventsourcing.postgres:PostgresApplicationRecorder._insert_events",
        "319d1ce6f3f9c86550bc6fcea010dde3785c41788e6743080376ba3bf07f41ff",
        "`FencedPostgresRecorder` in stores/idempotency.py",
    ),
    (
        "eventsourcing.sqlite:SQLiteAggregateRecorder.insert_events",
        "32f60619a2ca6e6a68cc63612d17c5e2e64defa63baa14cb1800f8e7d872eed5",
        "`FencedSQLiteRecorder` in stores/idempotency.py (its hook runs inside the insert's "
        "transaction)",
    ),
    (
        "eventsourcing.sqlite:SQLiteApplicationRecorder._insert_events",
        "413cdf219c7bae6361386b240f477256549c5675adc02089fed33453160f1611",
        "`FencedSQLiteRecorder` in stores/idempotency.py",
    ),
]

RE_READ = (
    "re-read {reader} against the new `{name}` (and the docstring of domain/library.py), fix "
    "them if the library's behaviour moved, then record the new hash in tests/test_library_pin.py"
)


def _pinned() -> str:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (pin,) = (m[1] for d in dependencies if (m := re.fullmatch(r"eventsourcing==(\S+)", d)))
    return pin


def _source(name: str) -> str:
    module, qualname = name.split(":")
    found = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return inspect.getsource(found)


def test_the_installed_library_is_the_pinned_one_the_overrides_were_read_against() -> None:
    installed, pinned = metadata.version("eventsourcing"), _pinned()
    assert installed == pinned == HASHED_AT, (
        f"eventsourcing {installed} is installed, pyproject.toml pins {pinned}, and alma's "
        f"overrides were last read against {HASHED_AT}. Before moving the pin, re-read "
        "domain/library.py, ShreddingMapper in domain/erasure.py, `_event` in "
        "domain/transfer.py and the recorders in stores/idempotency.py against the new "
        "library (test_an_overridden_library_source_is_unchanged names each function), then "
        "set HASHED_AT in tests/test_library_pin.py."
    )


@pytest.mark.parametrize(("name", "digest", "reader"), OVERRIDDEN, ids=[o[0] for o in OVERRIDDEN])
def test_an_overridden_library_source_is_unchanged(name: str, digest: str, reader: str) -> None:
    actual = hashlib.sha256(_source(name).encode()).hexdigest()
    assert actual == digest, f"eventsourcing changed `{name}`: " + RE_READ.format(
        reader=reader, name=name
    )
