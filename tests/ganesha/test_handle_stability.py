"""What keeps a client's NFS file handle valid across a restart (docs/appliance.md "File handles").

Ganesha's handle carries the export id and the filesystem's identity as Ganesha's VFS backend sees it: the
device number with ``fsid_device = true`` (``--device-based-fsids=true``), the ``statfs`` f_fsid with false;
then the kernel's own handle (inode and generation). The export's ``Filesystem_Id`` is not in it: with the
export file unchanged (same Export_Id, same Filesystem_Id), changing where the filesystem identity comes from
makes every handle stale. Real Ganesha, the suite's raw NFSv4 client."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import pytest

from nfs_provisioner.ganesha.exports import ExportRequest
from tests.support import nfsraw
from tests.support.ganesha_env import Harness

pytestmark = pytest.mark.ganesha


def _status(h: Harness, fh: bytes) -> str:
    with nfsraw.Nfs4(host="127.0.0.1", port=h.port) as c:
        r = c.compound([c.putfh(fh), c.read()])
        return "OK" if r.status == nfsraw.NFS4_OK and r.last(nfsraw.OP_READ).data == b"data\n" else r.status_name


def _fh(h: Harness, path: Path) -> bytes:
    with nfsraw.Nfs4(host="127.0.0.1", port=h.port) as c:
        return c.path_fh(*path.parts[1:])


def test_a_handle_depends_on_the_export_id_and_the_filesystem_identity_not_on_filesystem_id(h: Harness) -> None:
    srv = h.server(device_based_fsids=True)
    vol = h.volume("v", content={"f": b"data\n"})
    export_id = srv.exports.add(ExportRequest(name="v", path=vol)).export_id
    export_file = srv.exports.exports_dir / "v.conf"
    rendered = export_file.read_text()
    assert f"Filesystem_Id = {export_id}.{export_id};" in rendered
    by_device = _fh(h, vol / "f")
    assert by_device[2:4] == export_id.to_bytes(2, "big"), "bytes 2-3: the export id"
    assert _status(h, by_device) == "OK"

    srv.stop()
    srv = h.server(device_based_fsids=True)
    assert _status(h, by_device) == "OK", "a restart on the same filesystem keeps the handle"
    assert _fh(h, vol / "f") == by_device

    srv.stop()
    srv = h.server(device_based_fsids=False)
    assert export_file.read_text() == rendered, "same Export_Id, same Filesystem_Id"
    assert _status(h, by_device) == "NFS4ERR_STALE", "Filesystem_Id does not keep a handle valid"
    by_statfs = _fh(h, vol / "f")
    assert by_statfs != by_device and by_statfs[2:4] == by_device[2:4]
    # version, flags, export id (2 bytes), length, then the VFS part: flags, fsid (8 bytes), kernel handle.
    st, fs = os.stat(vol), os.statvfs(vol)
    assert by_device[6:14] == struct.pack("=II", os.major(st.st_dev), os.minor(st.st_dev)), "the device numbers"
    assert by_statfs[6:14] == fs.f_fsid.to_bytes(8, sys.byteorder), "statfs f_fsid"
    assert by_statfs[14:] == by_device[14:], "the same kernel handle (type, inode, generation)"
    assert by_device[15:19] == struct.pack("=I", os.stat(vol / "f").st_ino & 0xFFFFFFFF)
    assert _status(h, by_statfs) == "OK"

    srv.stop()
    h.server(device_based_fsids=False)
    assert _status(h, by_statfs) == "OK", "a restart with --device-based-fsids=false keeps the handle too"
