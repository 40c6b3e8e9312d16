"""Templates, validation and atomic writes of the Ganesha manager (no processes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nfs_provisioner.ganesha import config, errors
from nfs_provisioner.ganesha.settings import AccessType, Ports, ServerSettings, Squash

pytestmark = pytest.mark.unit


def settings(tmp_path: Path, **kw: object) -> ServerSettings:
    root = tmp_path / "export"
    root.mkdir(exist_ok=True)
    return ServerSettings(export_root=root, run_dir=tmp_path / "run", **kw)  # type: ignore[arg-type]


def block(path: Path | None = None, **kw: object) -> config.ExportBlock:
    values: dict[str, object] = {
        "export_id": 7,
        "path": path or Path("/export/ok"),
        "squash": Squash.ROOT_ID_SQUASH,
        "access_type": AccessType.RW,
        "clients": ("10.1.2.0/24",),
        "nfsv3": False,
    }
    values.update(kw)
    return config.ExportBlock(**values)  # type: ignore[arg-type]


def test_packaged_templates_are_found_and_main_config_carries_the_settings(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        grace_period=42,
        lease_lifetime=30,
        device_based_fsids=False,
        dbus_name_prefix="inst1",
        ports=Ports(nfs=12049, mountd=12048),
        nfsv3=True,
    )
    text = config.Templates().render_main(s, export_index=Path("/x/exports.conf"))
    assert "NFS_Port = 12049;" in text
    assert "MNT_Port = 12048;" in text and "NLM_Port = 32803;" in text and "Rquota_Port = 875;" in text
    assert "Protocols = 3, 4;" in text
    assert "fsid_device = false;" in text
    assert "Dbus_Name_Prefix = inst1;" in text
    assert "Grace_Period = 42;" in text and "Graceless = false;" in text and "Lease_Lifetime = 30;" in text
    short = config.Templates().render_main(settings(tmp_path, grace_period=5), export_index=Path("/i"))
    assert "Lease_Lifetime = 5;" in short, "the lease fits into a short grace period"
    assert f'RecoveryRoot = "{s.export_root}/.ganesha/recovery";' in text
    assert "Filesystem_Id = 152.152;" in text and "Name = PSEUDO;" in text
    assert '%include "/x/exports.conf"' in text


def test_nfsv4_only_and_grace_zero_is_graceless(tmp_path: Path) -> None:
    text = config.Templates().render_main(settings(tmp_path, grace_period=0), export_index=Path("/x/i.conf"))
    assert "Protocols = 4;" in text and "Enable_NLM = false;" in text and "MNT_Port" not in text
    assert "Graceless = true;" in text and "Lease_Lifetime = 6;" in text
    assert "fsid_device = true;" in text
    assert "Dbus_Name_Prefix" not in text


@pytest.mark.parametrize("grace", [-1, 181])
def test_grace_period_out_of_range_is_refused(tmp_path: Path, grace: int) -> None:
    with pytest.raises(ValueError, match="grace_period"):
        settings(tmp_path, grace_period=grace)


def test_bad_main_settings_are_refused(tmp_path: Path) -> None:
    t = config.Templates()
    with pytest.raises(errors.InvalidRequest, match="prefix"):
        t.render_main(settings(tmp_path, dbus_name_prefix="a b;"), export_index=Path("/i"))
    with pytest.raises(errors.InvalidRequest, match="bind address"):
        t.render_main(settings(tmp_path, bind_addr="localhost; x"), export_index=Path("/i"))
    with pytest.raises(errors.InvalidRequest, match="port"):
        t.render_main(settings(tmp_path, ports=Ports(nfs=70000)), export_index=Path("/i"))


def test_export_block_renders_client_restriction_and_stable_fsid(tmp_path: Path) -> None:
    text = config.Templates().render_export(block(Path("/export/pvc-1")))
    kv = config.parse_block(text)
    assert kv["export_id"] == "7"
    assert kv["path"] == kv["pseudo"] == '"/export/pvc-1"'
    assert kv["filesystem_id"] == "7.7"
    assert kv["squash"] == "root_id_squash"
    assert kv["access_type"] == "None", "without a matching CLIENT block nobody gets access"
    assert "Clients = 10.1.2.0/24;" in text
    assert "Protocols = 4;" in text and "Transports = TCP;" in text


def test_export_block_for_nfsv3(tmp_path: Path) -> None:
    text = config.Templates().render_export(block(Path("/export/v"), nfsv3=True, clients=("*", "10.0.0.1")))
    assert "Protocols = 3, 4;" in text and "Transports = UDP, TCP;" in text
    assert "Clients = *, 10.0.0.1;" in text  # hosts bare: Ganesha 4.3 voids a list with ::1/128


def test_an_empty_client_list_renders_no_client_block_so_nobody_may_mount(tmp_path: Path) -> None:
    text = config.Templates().render_export(block(Path("/export/v"), clients=()))
    assert "CLIENT {" not in text and "Clients" not in text
    assert config.parse_block(text)["access_type"] == "None"
    # An operator template that writes a CLIENT block anyway would give Ganesha "Clients = ;": refused.
    override = tmp_path / "tpl"
    override.mkdir()
    (override / "export.conf.j2").write_text(
        "EXPORT {\n  Export_Id = {{ export_id }};\n  Path = {{ path | q }};\n  Pseudo = {{ pseudo | q }};\n"
        "  Filesystem_Id = {{ fsid }};\n  Access_Type = None;\n"
        "  CLIENT { Clients = {{ clients | join(', ') }}; Access_Type = RW; }\n  FSAL { Name = VFS; }\n}\n")
    with pytest.raises(errors.TemplateError, match="if clients"):
        config.Templates(override_dir=override).render_export(block(Path("/export/v"), clients=()))


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"export_id": 0}, errors.InvalidRequest),
        ({"export_id": 152}, errors.InvalidRequest),
        ({"export_id": 65536}, errors.InvalidRequest),
        ({"path": Path('/export/a"b')}, errors.InvalidRequest),
        ({"path": Path("/export/a;b")}, errors.InvalidRequest),
        ({"path": Path("/export/a}\nEXPORT {")}, errors.InvalidRequest),
        ({"clients": ("10.0.0.0/33",)}, errors.InvalidRequest),
        ({"clients": ("host name",)}, errors.InvalidRequest),
    ],
)
def test_bad_export_values_are_refused(kw: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        config.Templates().render_export(block(**kw))


def test_override_directory_wins_and_unfilled_placeholder_is_refused(tmp_path: Path) -> None:
    override = tmp_path / "tpl"
    override.mkdir()
    (override / "export.conf.j2").write_text(
        "EXPORT {\n  Export_Id = {{ export_id }};\n  Path = {{ path | q }};\n  Pseudo = {{ pseudo | q }};\n"
        "  Filesystem_Id = {{ fsid }};\n  Comment_Is_Missing = {{ no_such_value }};\n  FSAL { Name = VFS; }\n}\n"
    )
    t = config.Templates(override_dir=override)
    with pytest.raises(errors.TemplateError, match="unfilled placeholder"):
        t.render_export(block(Path("/export/a")))
    # The main template still comes from the package.
    assert "NFS_CORE_PARAM" in t.render_main(settings(tmp_path), export_index=Path("/i"))


def test_override_that_breaks_the_block_is_refused(tmp_path: Path) -> None:
    override = tmp_path / "tpl"
    override.mkdir()
    t = config.Templates(override_dir=override)
    cases = {
        "wrong path": 'EXPORT {\n Export_Id = {{ export_id }};\n Path = "/etc";\n Pseudo = {{ pseudo | q }};\n'
        " Filesystem_Id = {{ fsid }};\n}\n",
        "unbalanced": "EXPORT {\n Export_Id = {{ export_id }};\n Path = {{ path | q }};\n",
        "two blocks": "EXPORT { }\nEXPORT { }\n",
        "no fsid": "EXPORT {\n Export_Id = {{ export_id }};\n Path = {{ path | q }};\n Pseudo = {{ pseudo | q }};\n}\n",
    }
    for what, body in cases.items():
        (override / "export.conf.j2").write_text(body)
        with pytest.raises(errors.TemplateError):
            t.render_export(block(Path("/export/a")))
            pytest.fail(f"{what}: rendered")


def test_override_directory_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    override = tmp_path / "tpl"
    override.mkdir()
    (override / "ganesha.conf.j2").write_text("# operator main config {{ ports.nfs }}\n")
    monkeypatch.setenv("NFS_PROVISIONER_GANESHA_TEMPLATES", str(override))
    s = settings(tmp_path).defaults_from(os.environ)
    assert s.template_dir == override
    t = config.Templates(override_dir=s.template_dir)
    assert t.render_main(s, export_index=Path("/i")) == "# operator main config 2049\n"
    with pytest.raises(errors.TemplateError, match="does not exist"):
        config.Templates(override_dir=tmp_path / "missing")


def test_paths_must_be_existing_directories_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "export"
    (root / "vol").mkdir(parents=True)
    (root / ".ganesha").mkdir()
    (root / "file").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    ok = config.check_path_inside(root / "vol", root=root, exclude=[root / ".ganesha"])
    assert ok == root / "vol"
    bad = {
        "relative": Path("export/vol"),
        "dotdot": Path(f"{root}/vol/../vol"),
        "outside": outside,
        "the root itself": root,
        "symlink out": root / "link",
        "manager dir": root / ".ganesha",
        "missing": root / "nope",
        "a file": root / "file",
        "sibling prefix": Path(f"{root}2"),
    }
    (tmp_path / "export2").mkdir()
    for what, p in bad.items():
        with pytest.raises(errors.InvalidRequest):
            config.check_path_inside(p, root=root, exclude=[root / ".ganesha"])
            pytest.fail(f"{what} accepted")


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "../x", "a b", "x" * 300, "a;b", "n.tmp"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(errors.InvalidRequest):
        config.check_name(name)


def test_index_lists_one_include_per_file_sorted() -> None:
    text = config.render_index([Path("/c/b.conf"), Path("/c/a.conf")])
    assert text.splitlines()[1:] == ['%include "/c/a.conf"', '%include "/c/b.conf"']


def test_atomic_write_replaces_whole_file_and_cleans_up_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f.conf"
    config.atomic_write(target, "one\n")
    config.atomic_write(target, "two\n", durable=False)
    assert target.read_text() == "two\n"
    assert os.stat(target).st_mode & 0o777 == 0o644
    as_dir = tmp_path / "d.conf"
    as_dir.mkdir()
    with pytest.raises(OSError):
        config.atomic_write(as_dir, "x")  # rename onto a directory fails
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.conf", "f.conf"], "no temp file left behind"


def test_bus_config_renders_private_socket(tmp_path: Path) -> None:
    text = config.Templates().render_bus(socket_path=tmp_path / "bus.sock")
    assert f"<listen>unix:path={tmp_path}/bus.sock</listen>" in text and "<type>system</type>" in text
    with pytest.raises(errors.InvalidRequest):
        config.Templates().render_bus(socket_path=Path("/tmp/a<b"))
