"""The pure parts of nfs_provisioner.quota, on the host (which has no quota
support at all): mountinfo parsing and the start-up check, the projects file,
xfs_quota report parsing, input validation, and how command failures surface."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from nfs_provisioner.quota import commands, errors, manager, metrics, mountinfo, projects, report

pytestmark = pytest.mark.unit  # no quota marker: nothing here needs XFS quotas or UML

MOUNTINFO = r"""22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
25 1 259:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
40 25 7:0 / /srv/export rw,relatime shared:30 - xfs /dev/loop0 rw,attr2,inode64,logbufs=8,logbsize=32k,prjquota
41 25 7:1 / /srv/plain rw,relatime - xfs /dev/loop1 rw,attr2,inode64,logbufs=8,logbsize=32k,noquota
42 25 7:2 / /srv/acct rw,relatime - xfs /dev/loop2 rw,attr2,inode64,logbufs=8,logbsize=32k,pqnoenforce
43 25 7:3 / /srv/old\040name rw,relatime master:4 - xfs /dev/loop3 rw,attr2,inode64,pquota
44 25 0:50 / /srv/plain rw,relatime - tmpfs tmpfs rw,size=1024k
"""

REPORT_WITH_HEADER = (  # real output, trailing blanks and all
    "Project quota on /run/mnt (/dev/ubda)\n"
    "                               Blocks                     \n"
    "Project ID       Used       Soft       Hard    Warn/Grace     \n"
    "---------- -------------------------------------------------- \n"
    "#0                   0          0          0     00 [--------]\n"
    "#7                1024          0       1024     00 [--------]\n"
    "\n"
)


class NoCommands:
    """A runner for code paths that must fail before running anything."""

    def __call__(self, argv: Sequence[str]) -> commands.CommandResult:
        raise AssertionError(f"no command expected, got {argv}")


def fake_filesystem(root: Path) -> mountinfo.QuotaFilesystem:
    mount = mountinfo.parse_mountinfo(f"40 25 7:0 / {root} rw - xfs /dev/loop0 rw,prjquota\n")[0]
    return mountinfo.QuotaFilesystem(export_root=root.resolve(), mount=mount, block_size=4096, xfs_quota_version="t")


# -- mountinfo ------------------------------------------------------------------


def test_mountinfo_fields_optional_tags_and_escapes() -> None:
    entries = mountinfo.parse_mountinfo(MOUNTINFO)
    assert len(entries) == 7
    export = entries[2]
    assert (export.mount_point, export.fstype, export.source) == (Path("/srv/export"), "xfs", "/dev/loop0")
    assert "prjquota" in export.super_options and export.mount_options == ("rw", "relatime")
    assert entries[5].mount_point == Path("/srv/old name")


def test_find_mount_longest_prefix_and_stacked_mounts() -> None:
    entries = mountinfo.parse_mountinfo(MOUNTINFO)
    assert mountinfo.find_mount(entries, Path("/srv/export/pvc-1")).mount_point == Path("/srv/export")
    assert mountinfo.find_mount(entries, Path("/srv/export")).mount_point == Path("/srv/export")
    assert mountinfo.find_mount(entries, Path("/srv/exporter")).mount_point == Path("/")
    assert mountinfo.find_mount(entries, Path("/srv/plain/x")).fstype == "tmpfs"  # mounted on top, wins


def test_malformed_mountinfo_is_an_error() -> None:
    with pytest.raises(errors.QuotaStateError, match="line 1"):
        mountinfo.parse_mountinfo("garbage without separator\n")


@pytest.mark.parametrize(
    ("path", "error", "text"),
    [
        ("/home/x", errors.NotXfsError, "type ext4"),
        ("/srv/plain", errors.NotXfsError, "type tmpfs"),
        ("/srv/acct/x", errors.ProjectQuotaOffError, "not enforced"),
    ],
)
def test_check_mount_refuses_with_an_actionable_message(path: str, error: type[Exception], text: str) -> None:
    entries = mountinfo.parse_mountinfo(MOUNTINFO)
    with pytest.raises(error, match=text) as e:
        mountinfo.check_mount(mountinfo.find_mount(entries, Path(path)), export_root=Path(path))
    assert path in str(e.value) and ("prjquota" in str(e.value) or "XFS" in str(e.value))


def test_check_mount_xfs_without_quota_says_how_to_mount() -> None:
    entries = mountinfo.parse_mountinfo(MOUNTINFO.replace("44 25 0:50 / /srv/plain", "44 25 0:50 / /srv/other"))
    with pytest.raises(errors.ProjectQuotaOffError) as e:
        mountinfo.check_mount(mountinfo.find_mount(entries, Path("/srv/plain")), export_root=Path("/srv/plain"))
    assert "mount -o prjquota /dev/loop1 /srv/plain" in str(e.value) and "noquota" in str(e.value)


@pytest.mark.parametrize("path", ["/srv/export/pvc", "/srv/old name/pvc"])
def test_check_mount_accepts_prjquota_and_pquota(path: str) -> None:
    entries = mountinfo.parse_mountinfo(MOUNTINFO)
    mountinfo.check_mount(mountinfo.find_mount(entries, Path(path)), export_root=Path(path))


def test_startup_check_on_this_hosts_real_filesystem_fails_clearly(tmp_path: Path) -> None:
    # The host kernel has no quota support: whatever tmp_path is on, the check must refuse it.
    with pytest.raises(errors.QuotaUnavailableError) as e:
        mountinfo.check_export_root(tmp_path, runner=commands.SubprocessRunner())
    assert str(tmp_path.resolve()) in str(e.value)
    assert "--enable-xfs-quota" in str(e.value)


def _mountinfo_file(tmp_path: Path, root: Path, fstype: str, options: str) -> Path:
    f = tmp_path / "mountinfo"
    f.write_text(MOUNTINFO + f"90 25 7:9 / {root} rw,relatime - {fstype} /dev/loop9 {options}\n")
    return f


def test_startup_check_tmpfs_export_root(tmp_path: Path) -> None:
    root = (tmp_path / "export").resolve()
    root.mkdir()
    info = _mountinfo_file(tmp_path, root, "tmpfs", "rw,size=10m")
    with pytest.raises(errors.NotXfsError, match="type tmpfs"):
        mountinfo.check_export_root(root / ".", runner=NoCommands(), mountinfo=info)


def test_startup_check_needs_xfs_quota_on_path(tmp_path: Path) -> None:
    root = (tmp_path / "export").resolve()
    root.mkdir()
    info = _mountinfo_file(tmp_path, root, "xfs", "rw,attr2,prjquota")
    no_path = commands.SubprocessRunner(env={"PATH": str(tmp_path / "empty")})
    with pytest.raises(errors.QuotaToolMissingError, match="xfsprogs"):
        mountinfo.check_export_root(root, runner=no_path, mountinfo=info)
    fs = mountinfo.check_export_root(root, runner=commands.SubprocessRunner(), mountinfo=info)
    assert fs.mount_point == root and fs.xfs_quota_version.startswith("xfs_quota version")
    assert fs.block_size == os.statvfs(root).f_bsize


def test_startup_check_export_root_must_exist(tmp_path: Path) -> None:
    with pytest.raises(errors.QuotaUnavailableError, match="not a directory"):
        mountinfo.check_export_root(tmp_path / "missing", runner=NoCommands())


# -- projects file --------------------------------------------------------------


def test_projects_file_parse_and_format_round_trip() -> None:
    text = "# comment\n\n2:/export/pvc-b:2097152\n1:/srv/a:b/pvc-a:1048576\n"
    entries = projects.parse_projects(text)
    assert [(e.project_id, str(e.directory), e.limit_bytes) for e in entries] == [
        (2, "/export/pvc-b", 2097152),
        (1, "/srv/a:b/pvc-a", 1048576),
    ]
    assert projects.format_projects(entries) == "1:/srv/a:b/pvc-a:1048576\n2:/export/pvc-b:2097152\n"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("1:/export/a\n", "projects:1: expected"),
        ("x:/export/a:5\n", "expected"),
        ("1:/export/a:5\n0:/export/b:5\n", "projects:2: project id 0 out of range"),
        ("4294967295:/export/a:5\n", "out of range"),
        ("1:relative:5\n", "bad directory"),
        ("1:/export/a:5\n1:/export/b:5\n", "appears twice"),
    ],
)
def test_projects_file_refuses_malformed_lines(text: str, match: str) -> None:
    with pytest.raises(errors.QuotaStateError, match=match):
        projects.parse_projects(text)


def test_projects_file_atomic_write(tmp_path: Path) -> None:
    path = tmp_path / "projects"
    assert projects.read_projects(path) == []
    entries = [projects.ProjectEntry(project_id=3, directory=Path("/export/c"), limit_bytes=5)]
    projects.write_projects(path, entries)
    more = projects.ProjectEntry(project_id=1, directory=Path("/e/a"), limit_bytes=9)
    projects.write_projects(path, [*entries, more])
    assert path.read_text() == "1:/e/a:9\n3:/export/c:5\n"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["projects"]


def test_projects_file_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "projects"
    target.mkdir()
    (target / "keep").write_text("x")  # a non-empty directory: the rename must fail
    with pytest.raises(OSError):
        projects.write_projects(target, [projects.ProjectEntry(project_id=1, directory=Path("/e/a"), limit_bytes=1)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["projects"]
    assert (target / "keep").read_text() == "x"


# -- xfs_quota report -----------------------------------------------------------


def test_report_parsing_with_and_without_header() -> None:
    with_header = report.parse_report(REPORT_WITH_HEADER)
    assert with_header[7] == report.ReportEntry(
        project_id=7, used_bytes=1024 * 1024, soft_limit_bytes=0, hard_limit_bytes=1024 * 1024
    )
    bare = report.parse_report("#0 0 0 0 00 [--------]\n#4294967294 12 8 4194304000 01 [6 days]\n")
    assert bare[4294967294].hard_limit_bytes == 4194304000 * 1024
    assert bare[4294967294].soft_limit_bytes == 8 * 1024 and set(bare) == {0, 4294967294}
    assert report.parse_report("") == {}


def test_report_garbage_is_an_error() -> None:
    with pytest.raises(errors.QuotaStateError, match="line 2"):
        report.parse_report("#1 0 0 0\n#2 lots 0 0\n")


def test_applied_limit_rounds_up_to_whole_blocks() -> None:
    assert manager.applied_limit(1000, 4096) == 4096
    assert manager.applied_limit(4096, 4096) == 4096
    assert manager.applied_limit(1024**3 + 1, 4096) == 1024**3 + 4096


# -- commands -------------------------------------------------------------------


def test_xfs_quota_error_on_stderr_with_exit_code_zero_is_a_failure(tmp_path: Path) -> None:
    # Real xfs_quota against a path that is no XFS mount: it prints an error and exits 0.
    xfs = commands.XfsQuota(mount_point=tmp_path, runner=commands.SubprocessRunner())
    with pytest.raises(errors.QuotaCommandError) as e:
        xfs.set_block_hard_limit(7, 1 << 20)
    assert e.value.returncode == 0
    assert "cannot setup path" in str(e.value) and "limit -p bhard=1048576 7" in str(e.value)


def test_runner_timeout_and_missing_program(tmp_path: Path) -> None:
    with pytest.raises(errors.QuotaCommandError, match="timed out"):
        commands.SubprocessRunner(timeout=0.2)(["sleep", "5"])
    with pytest.raises(FileNotFoundError):
        commands.SubprocessRunner()([str(tmp_path / "no-such-program")])
    result = commands.SubprocessRunner()(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_collector_reports_down_when_usage_cannot_be_read(tmp_path: Path) -> None:
    # The "mount point" is no XFS mount, so the real xfs_quota report fails at scrape time.
    quotas = manager.ProjectQuotas(filesystem=fake_filesystem(tmp_path), runner=commands.SubprocessRunner())
    registry = CollectorRegistry()
    metrics.ProjectQuotaCollector(quotas, registry=registry)
    assert registry.get_sample_value(metrics.UP) == 0


# -- validation (fails before any command runs) ---------------------------------


@pytest.fixture
def quotas(tmp_path: Path) -> manager.ProjectQuotas:
    root = tmp_path / "export"
    root.mkdir()
    return manager.ProjectQuotas(filesystem=fake_filesystem(root), runner=NoCommands())


def test_add_refuses_directories_outside_or_escaping_the_root(quotas: manager.ProjectQuotas, tmp_path: Path) -> None:
    root = quotas.export_root
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    (root / "real").mkdir()
    (root / "alias").symlink_to(root / "real")
    (root / "file").write_text("")
    (root / "with space").mkdir()
    cases = {
        outside: "outside",
        root / "escape": "symlink",
        root / "alias": "symlink",
        root / "real" / ".." / ".." / "outside": "outside",
        root: "outside",
        root / "missing": "does not exist",
        root / "file": "not a directory",
        root / "with space": "whitespace",
    }
    for directory, text in cases.items():
        with pytest.raises(errors.InvalidQuotaRequest, match=text):
            quotas.add(directory, 1 << 20)
    assert not quotas.projects_file.exists()


def test_add_refuses_bad_sizes_and_nesting(quotas: manager.ProjectQuotas) -> None:
    root = quotas.export_root
    (root / "a" / "b").mkdir(parents=True)
    for size in (0, -1, True, 1.5):
        with pytest.raises(errors.InvalidQuotaRequest, match="positive"):
            quotas.add(root / "a", size)  # type: ignore[arg-type]
    projects.write_projects(quotas.projects_file, [projects.ProjectEntry(1, root / "a", 1 << 20)])
    with pytest.raises(errors.InvalidQuotaRequest, match="nest"):
        quotas.add(root / "a" / "b", 1 << 20)


@pytest.mark.parametrize("project_id", [0, -1, 2**32 - 1, True])
def test_ids_out_of_range_are_refused(quotas: manager.ProjectQuotas, project_id: int) -> None:
    with pytest.raises(errors.InvalidQuotaRequest, match="project id"):
        quotas.remove(project_id)
    with pytest.raises(errors.InvalidQuotaRequest, match="project id"):
        quotas.set_limit(project_id, 1 << 20)


def test_lookup_by_directory_does_not_follow_a_final_symlink(quotas: manager.ProjectQuotas) -> None:
    root = quotas.export_root
    (root / "a").mkdir()
    projects.write_projects(quotas.projects_file, [projects.ProjectEntry(4, root / "a", 1 << 20)])
    (root / "link").symlink_to(root / "a")
    assert quotas.project_of(root / "a") == 4
    assert quotas.project_of(root / "sub" / ".." / "a") == 4
    assert quotas.project_of(root / "link") is None
