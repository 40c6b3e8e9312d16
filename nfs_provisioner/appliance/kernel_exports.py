"""``--use-ganesha=false``: volumes exported by the kernel's NFS server.

One line per volume in ``/etc/exports``, marked with a trailing
``# nfs-provisioner:<pv name>`` comment (lines without it are the operator's and
are kept verbatim), then ``exportfs -r`` to re-sync the kernel's export table.
The file is rewritten atomically; if ``exportfs`` refuses the new file, the old
one is put back (and re-synced) and the error is raised. ``fsid`` is the lowest
id >= 1 not used by any line in the file, so handles stay valid across
restarts. :meth:`KernelExporter.set_clients` rewrites every marked line for a new client list; with
no clients at all a volume's line is kept commented out (``#nobody ...``: a line without clients would
export to everyone).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nfs_provisioner import fileio
from nfs_provisioner.errors import NFSProvisionerError

MARK = "# nfs-provisioner:"
DISABLED = "#nobody "
"""Prefix of a marked line while no client may mount (the line keeps its path and fsid)."""
_FSID = re.compile(r"fsid=(\d+)")
Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


class KernelExportError(NFSProvisionerError, RuntimeError):
    pass


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)


@dataclass(frozen=True)
class Line:
    name: str
    fsid: int
    path: str
    text: str


class KernelExporter:
    def __init__(self, *, clients: Sequence[str] = ("*",), exports_file: Path = Path("/etc/exports"),
                 exportfs: str = "exportfs", runner: Runner = _run) -> None:
        self.clients = tuple(clients)
        self.exports_file = exports_file
        self.exportfs = exportfs
        self.runner = runner
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ reading

    def _read(self) -> tuple[list[str], dict[str, Line]]:
        try:
            lines = self.exports_file.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        ours: dict[str, Line] = {}
        for text in lines:
            body, sep, name = text.partition(MARK)
            if sep and name.strip():
                fsid = _FSID.search(body)
                fields = body.removeprefix(DISABLED).split()
                ours[name.strip()] = Line(name=name.strip(), fsid=int(fsid.group(1)) if fsid else 0,
                                          path=fields[0] if fields else "", text=text)
        return lines, ours

    def count(self) -> int:
        return len(self._read()[1])

    def has(self, name: str) -> bool:
        return name in self._read()[1]

    # ------------------------------------------------------------------ changing

    def root_squash(self, name: str) -> bool | None:
        line = self._read()[1].get(name)
        return None if line is None else "no_root_squash" not in line.text

    def path_of(self, name: str) -> Path | None:
        line = self._read()[1].get(name)
        return None if line is None else Path(line.path)

    def unserved(self) -> dict[str, str]:
        """The kernel serves every line of /etc/exports (``exportfs -r`` fails the export call otherwise)."""
        return {}

    def serve_again(self, name: str) -> str | None:
        return None

    def export(self, *, name: str, path: Path, root_squash: bool, export_id: int | None = None) -> tuple[int, str]:
        """``export_id`` is ignored: the fsid is the lowest free one."""
        if any(c.isspace() for c in str(path)) or "#" in str(path):
            raise KernelExportError(f"path {str(path)!r} cannot be written to {self.exports_file}")
        with self._lock:
            lines, ours = self._read()
            if name in ours:
                if ours[name].path != str(path):
                    raise KernelExportError(f"{name} is exported from {ours[name].path}, not {path}")
                return ours[name].fsid, ours[name].text
            used = {int(m) for text in lines for m in _FSID.findall(text.split("#", 1)[0])}
            used |= {line.fsid for line in ours.values()}
            fsid = next(i for i in range(1, len(used) + 2) if i not in used)
            text = self._line(name=name, path=str(path), fsid=fsid, root_squash=root_squash)
            self._apply(lines, [*lines, text])
            return fsid, text

    def set_clients(self, clients: Sequence[str]) -> None:
        """Export every marked line to ``clients`` from now on (one rewrite, one ``exportfs -r``)."""
        with self._lock:
            self.clients = tuple(clients)
            lines, ours = self._read()
            by_text = {line.text: line for line in ours.values()}
            new = [t if t not in by_text else self._line(
                name=by_text[t].name, path=by_text[t].path, fsid=by_text[t].fsid,
                root_squash="no_root_squash" not in t.partition(MARK)[0]) for t in lines]
            if new != lines:
                self._apply(lines, new)

    def _line(self, *, name: str, path: str, fsid: int, root_squash: bool) -> str:
        opts = f"rw,sync,no_subtree_check,{'root_squash' if root_squash else 'no_root_squash'},fsid={fsid}"
        if not self.clients:
            return f"{DISABLED}{path} (no client may mount) {opts}  {MARK}{name}"
        return f"{path} " + " ".join(f"{c}({opts})" for c in self.clients) + f"  {MARK}{name}"

    def unexport(self, name: str) -> bool:
        with self._lock:
            lines, ours = self._read()
            if name not in ours:
                return False
            self._apply(lines, [t for t in lines if t != ours[name].text])
            return True

    def _apply(self, old: list[str], new: list[str]) -> None:
        self._write(new)
        r = self.runner([self.exportfs, "-r"])
        if r.returncode != 0:
            self._write(old)
            self.runner([self.exportfs, "-r"])
            raise KernelExportError(f"exportfs -r refused the new {self.exports_file}: "
                                    f"{(r.stderr or r.stdout).strip()}")

    def _write(self, lines: list[str]) -> None:
        directory = self.exports_file.parent
        fd, tmp = tempfile.mkstemp(prefix=".exports.", dir=directory)
        try:
            with fileio.naming(self.exports_file), os.fdopen(fd, "w") as f:
                f.write("".join(t + "\n" for t in lines))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.exports_file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
