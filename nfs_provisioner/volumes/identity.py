"""The instance identity: a UUID kept in ``<export root>/nfs-provisioner.identity``.

Written once, on first start, and stored on every PV this instance creates, so
that several instances sharing one class each delete only their own volumes.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

FILENAME = "nfs-provisioner.identity"


class IdentityError(RuntimeError):
    pass


def load_or_create(export_root: Path) -> str:
    path = export_root / FILENAME
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if value:
        try:
            return str(uuid.UUID(value))
        except ValueError as e:
            raise IdentityError(f"{path} holds {value[:40]!r}, not a UUID; fix or remove it (removing it "
                                "orphans the volumes created under the old identity)") from e
    new = str(uuid.uuid4())
    tmp = path.with_name(f".{FILENAME}.tmp")
    with open(tmp, "w") as f:
        f.write(new + "\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # fails if a concurrent start wrote one first
    except FileExistsError:
        return load_or_create(export_root)
    finally:
        tmp.unlink(missing_ok=True)
    return new
