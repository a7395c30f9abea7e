"""Characters' images (a Character Card's picture) and a CHARX's other files, one file each under
the data folder.

An image is named by its sha256, which the character's events hold (`Character.image`): a file
in the character's own folder, `<data_dir>/images/<character id>/<sha256>.png` (a CHARX's file:
`<sha256>.asset`, `Character.assets`), so erasing the
character deletes its folder, and a past version's image stays for `?version=`. The images are
not in the event store: a tenant's export (`alma export`) does not carry them, and replicas
behind a load balancer need the folder shared.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from uuid import UUID


def digest_of(image: bytes) -> str:
    return hashlib.sha256(image).hexdigest()


class Images:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def keep(self, character_id: UUID, image: bytes, suffix: str = ".png") -> str:
        """Writes the image (whole or not at all) and returns its sha256."""
        digest = digest_of(image)
        path = self._path(character_id, digest, suffix)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as partial:
                partial.write(image)
            os.replace(partial.name, path)
        return digest

    def get(self, character_id: UUID, digest: str, suffix: str = ".png") -> bytes | None:
        path = self._path(character_id, digest, suffix)
        return path.read_bytes() if path.exists() else None

    def forget(self, character_id: UUID) -> None:
        """Deletes every image of the character."""
        shutil.rmtree(self.folder / str(character_id), ignore_errors=True)

    def _path(self, character_id: UUID, digest: str, suffix: str) -> Path:
        return self.folder / str(character_id) / f"{digest}{suffix}"
