"""Which Ganesha runs: the version check (older than 6.2 is refused with one line), an
unpacked tree started through its own loader, and a rendered config 6.5 does not complain about."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nfs_provisioner.ganesha import binary
from nfs_provisioner.ganesha.exports import ExportRequest
from nfs_provisioner.ganesha.settings import GANESHA_ROOT_ENV
from tests.support import ganesha_env, nfs42_client
from tests.support.ganesha_env import Harness, free_port

MiB = 1 << 20


NFS4ERR_NOTSUPP = 10004


@pytest.mark.ganesha
def test_tests_run_the_ganesha_the_image_ships_and_it_accepts_every_rendered_option(h: Harness) -> None:
    srv = h.server()
    assert srv.ganesha_version is not None and srv.ganesha_version >= (6, 5, 0), srv.ganesha_version
    root = ganesha_env.select_ganesha()
    if root is not None:  # unpacked: the process runs the tree's loader and binary, and its FSAL directory
        assert srv.ganesha_pid is not None
        with open(f"/proc/{srv.ganesha_pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
        assert cmdline[0].decode() == str(root / binary.TREE_LIB / binary.LOADER)
        assert f'Plugins_Dir = "{root / binary.TREE_PLUGINS}";' in srv.main_config.read_text()
    srv.exports.add(ExportRequest(name="v", path=h.volume("v", content={"f": b"hello"})))
    assert h.client().cat(h.export_root / "v" / "f").stdout == b"hello"
    assert ganesha_env.config_complaints(srv.settings.log_path.read_text()) == []


@pytest.mark.ganesha
def test_the_hosts_older_ganesha_is_refused_at_start_with_one_line(h: Harness) -> None:
    """The manager as a user runs it (``python -m nfs_provisioner.ganesha``, what the appliance
    starts too) on a host whose installed Ganesha is bookworm's 4.3: exit 1, one error line,
    nothing started and no config written."""
    installed = ganesha_env.host_ganesha_version()
    if installed is None or installed[:2] >= binary.MIN_VERSION:
        pytest.skip(f"no Ganesha older than 6.2 installed here (installed: {installed})")
    env = {k: v for k, v in os.environ.items() if k != GANESHA_ROOT_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "nfs_provisioner.ganesha", f"--export-root={h.export_root}",
         f"--run-dir={h.run_root / 'old'}", f"--nfs-port={free_port()}", "--bind-addr=127.0.0.1",
         f"--dbus-name-prefix={h.prefix}", "--grace-period=0"],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    said = [line.split(": ", 1)[1] for line in done.stderr.splitlines() if " ERROR " in line]
    version = ".".join(map(str, installed[:2]))
    assert said == [f"NFS-Ganesha {version} is too old: nfs-provisioner needs 6.2 or newer (older releases break "
                    "NFSv4.2 READ_PLUS for Linux >= 6.6 clients, nfs-ganesha #1188); use the image, Debian "
                    f"trixie's nfs-ganesha, or an unpacked one named by {GANESHA_ROOT_ENV}"], done.stderr
    assert "started" not in done.stderr, "nothing was started"
    assert not (h.export_root / ".ganesha" / "ganesha.conf").exists(), "refused before anything was written"


@pytest.mark.ganesha
def test_read_plus_never_returns_wrong_data(h: Harness) -> None:
    """The reason for 6.x (nfs-ganesha #1188): READ_PLUS of a sparse file. Measured: 4.3 answers a
    READ_PLUS at 3 MiB with one 0-byte DATA segment at offset 0 (the file does not read back);
    6.5 answers NFS4ERR_NOTSUPP, so Linux clients fall back to READ. Either an honest refusal or
    the right bytes, never wrong ones."""
    srv = h.server()
    vol = h.volume("sparse")
    path = vol / "sparse.bin"
    with path.open("wb") as f:  # data at 0, just past 3 MiB and at the end; holes between
        for offset in (0, 3 * MiB + 123, 8 * MiB - 4096):
            f.seek(offset)
            f.write(os.urandom(4096))
        f.truncate(8 * MiB)
    srv.exports.add(ExportRequest(name="sparse", path=vol))
    nfs = nfs42_client.Client(host="127.0.0.1", port=h.port)
    try:
        try:
            got = nfs.read_file(str(path), size=8 * MiB)
        except nfs42_client.NfsError as e:
            assert (e.op, e.status) == (nfs42_client.OP_READ_PLUS, NFS4ERR_NOTSUPP), e
            return
        assert got == path.read_bytes(), "READ_PLUS returned wrong data"
    finally:
        nfs.close()
