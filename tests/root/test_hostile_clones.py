"""Hostile clone sources and what a failing copy must never do (issue 28: D2, D3, D10, D17).

- D2: a source tree deeper than Python's recursion limit is measured, copied and removed without recursion,
  and any unexpected error of a copy thread is a reported failure of the claim, never a clone Pending forever.
- D3: measuring, copying and removing a tree hold a bounded number of descriptors whatever its shape (checked
  at a lowered ``RLIMIT_NOFILE``, in a child process).
- D10: copies in progress reserve the space they will use; concurrent clones that do not fit are refused before
  copying, the others complete, nothing runs out of space mid-copy.
- D17: errors from descriptor-relative operations name the path (a volume record that is a directory).

The unit tests work on real trees in the test's temp directory; the e2e tests run the real appliance (its own
Ganesha) against the local control plane, as the users' claims would.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from nfs_provisioner.volumes.records import RecordError, VolumeRecord, VolumeRecords
from tests.support import smallfs


@pytest.mark.fault
def test_d17_a_write_on_a_full_export_root_names_the_file(tmp_path: Path) -> None:
    """ENOSPC from a descriptor's write or fsync names no file; writing a volume record on a full filesystem
    (a real ext4 on a loop device) says which file (before: "[Errno 28] No space left on device" alone)."""
    with smallfs.mounted(tmp_path / "small", image=tmp_path / "small.img") as root:
        records = VolumeRecords(root / ".volumes")
        records.ensure_dir()
        smallfs.fill(root)
        record = VolumeRecord(pv_name="pvc-1", claim_uid="u1", claim_namespace="ns", claim_name="c", identity="id",
                              path=str(root / "pvc-1"), root_squash=False, created=0.0)
        with pytest.raises(RecordError) as e:
            records.write(record)
        assert "No space left on device" in str(e.value) and f"{root}/.volumes/pvc-1.json" in str(e.value), e.value
        assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == errno.ENOSPC
        assert os.listdir(root / ".volumes") == []  # the temp file is gone
        for f in root.glob("fill-*"):
            f.unlink()
