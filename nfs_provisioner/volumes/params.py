"""StorageClass parameters of the NFS appliance, parsed and validated.

Known parameters (anything else is rejected, as the original appliance did):

- ``gid``: ``none`` (default) or a positive integer (ASCII digits). The volume directory gets
  that group, mode 0071|setgid, and the PV gets ``pv.beta.kubernetes.io/gid``
  so pods receive the group as a supplemental group.
- ``rootSquash``: ``true``/``false`` (default false): root_id_squash instead of
  no_root_squash on the export.
- ``onDelete``: ``delete`` (default), ``retain`` (directory kept, export
  removed) or ``archive`` (directory renamed aside under ``.archive/``). Recorded in
  the volume record when the volume is made; what a delete does is decided by
  ``nfs_provisioner.volumes.ondelete``.
- ``mountOptions``: legacy comma-separated mount options, used when the class
  itself has no ``mountOptions``.
- ``isolation``: ``directory`` (default: a directory of the export root's
  filesystem) or ``filesystem`` (a filesystem of its own per volume, in a
  sparse image on a loop device: docs/filesystem-volumes.md).
- ``fsType``: ``ext4`` (default) or ``xfs``; only with ``isolation: filesystem``.
- ``poolMember``: with ``--pool``, the member (identity or server address) that makes every volume of the
  class; read by the pool's placement (``nfs_provisioner.controller.pool``), accepted and unused here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from nfs_provisioner.errors import Permanent

OnDelete = Literal["delete", "retain", "archive"]
ON_DELETE: tuple[OnDelete, ...] = ("delete", "retain", "archive")
Isolation = Literal["directory", "filesystem"]
FsType = Literal["ext4", "xfs"]
KNOWN = ("gid", "rootSquash", "onDelete", "mountOptions", "isolation", "fsType", "poolMember")
ISOLATIONS = ("directory", "filesystem")
FS_TYPES = ("ext4", "xfs")
MAX_GID = 2**31 - 1
_ASCII_DIGITS = re.compile(r"[0-9]{1,10}")
"""A numeric parameter: ASCII digits only (``str.isdigit`` also takes ``²`` and ``١٢٣``), short enough for int()."""


class InvalidParameter(Permanent, ValueError):
    """A StorageClass parameter the appliance cannot honour; the message names it."""


@dataclass(frozen=True)
class ClassParameters:
    gid: int | None = None
    root_squash: bool = False
    on_delete: OnDelete = "delete"
    mount_options: tuple[str, ...] = field(default_factory=tuple)
    isolation: Isolation = "directory"
    fs_type: FsType | None = None
    """The filesystem of a ``filesystem`` volume (``ext4`` when not given); None for a directory volume."""


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise InvalidParameter(f"invalid value {value!r} for parameter {name}: want true or false")


def on_delete_policy(value: object) -> OnDelete | None:
    """A deletion policy as written anywhere (the class parameter, a volume record, the PV annotation), case and
    surrounding whitespace ignored (``Archive`` is ``archive``); None when ``value`` is not one."""
    if not isinstance(value, str):
        return None
    v = value.strip().lower()
    for policy in ON_DELETE:
        if v == policy:
            return policy
    return None


def parse(parameters: Mapping[str, str] | None, *, class_mount_options: Sequence[str] | None = None) -> ClassParameters:
    """Validate a StorageClass's ``parameters`` (and its spec ``mountOptions``)."""
    params = dict(parameters or {})
    for key in params:
        if key not in KNOWN:
            raise InvalidParameter(f"invalid parameter {key!r}: known parameters are {', '.join(KNOWN)}")
    gid: int | None = None
    raw_gid = params.get("gid", "none").strip()
    if raw_gid.lower() != "none":
        if not _ASCII_DIGITS.fullmatch(raw_gid) or not 0 < int(raw_gid) <= MAX_GID:
            raise InvalidParameter(f"invalid value {raw_gid!r} for parameter gid: want 'none' or an integer "
                                   f"1-{MAX_GID}")
        gid = int(raw_gid)
    root_squash = _bool("rootSquash", params["rootSquash"]) if "rootSquash" in params else False
    on_delete = on_delete_policy(params.get("onDelete", "delete"))
    if on_delete is None:
        raise InvalidParameter(f"invalid value {params['onDelete']!r} for parameter onDelete: want delete, retain "
                               "or archive")
    options: tuple[str, ...] = tuple(class_mount_options or ())
    if "mountOptions" in params:
        if options:
            raise InvalidParameter("mountOptions is set both on the class and as a parameter; keep the class's")
        options = tuple(o.strip() for o in params["mountOptions"].split(",") if o.strip())
    for o in options:
        if any(c.isspace() for c in o):
            raise InvalidParameter(f"invalid mount option {o!r}: must not contain whitespace")
    isolation, fs_type = _isolation(params)
    return ClassParameters(gid=gid, root_squash=root_squash, on_delete=on_delete, mount_options=options,
                           isolation=isolation, fs_type=fs_type)


def _isolation(params: Mapping[str, str]) -> tuple[Isolation, FsType | None]:
    """``isolation`` and ``fsType``: a ``fsType`` without ``isolation: filesystem`` is refused (it would be
    silently ignored, and the user would believe the volume has a filesystem of its own)."""
    isolation = params.get("isolation", "directory").strip().lower()
    if isolation not in ISOLATIONS:
        raise InvalidParameter(f"invalid value {params['isolation']!r} for parameter isolation: want directory or "
                               "filesystem")
    if "fsType" in params and isolation != "filesystem":
        raise InvalidParameter("parameter fsType needs isolation: filesystem (a directory volume lies on the export "
                               "root's filesystem)")
    if isolation == "directory":
        return "directory", None
    fs_type = params.get("fsType", "ext4").strip().lower()
    if fs_type not in FS_TYPES:
        raise InvalidParameter(f"invalid value {params['fsType']!r} for parameter fsType: want ext4 or xfs")
    return "filesystem", fs_type  # type: ignore[return-value]
