"""Where NFS_PROVISIONER_GANESHA_TEMPLATES and NFS_PROVISIONER_GANESHA_ROOT are read: by whoever maps its
environment onto the Ganesha settings (``ServerSettings.defaults_from``), never by the settings themselves;
a field given (a flag) wins over its variable, as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfs_provisioner import cli
from nfs_provisioner.ganesha.settings import GANESHA_ROOT_ENV, TEMPLATES_ENV, ServerSettings

pytestmark = pytest.mark.unit


def plain(tmp_path: Path, **kw: object) -> ServerSettings:
    return ServerSettings(export_root=tmp_path / "export", run_dir=tmp_path / "run", **kw)  # type: ignore[arg-type]


def test_settings_alone_read_no_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEMPLATES_ENV, str(tmp_path / "tpl"))
    monkeypatch.setenv(GANESHA_ROOT_ENV, str(tmp_path / "tree"))
    s = plain(tmp_path)
    assert (s.template_dir, s.ganesha_root) == (None, None)


def test_environment_fills_unset_fields(tmp_path: Path) -> None:
    env = {TEMPLATES_ENV: str(tmp_path / "tpl"), GANESHA_ROOT_ENV: str(tmp_path / "tree")}
    s = plain(tmp_path).defaults_from(env)
    assert (s.template_dir, s.ganesha_root) == (tmp_path / "tpl", tmp_path / "tree")


def test_fields_given_win_and_empty_values_are_unset(tmp_path: Path) -> None:
    env = {TEMPLATES_ENV: str(tmp_path / "tpl"), GANESHA_ROOT_ENV: ""}
    s = plain(tmp_path, template_dir=tmp_path / "flag").defaults_from(env)
    assert (s.template_dir, s.ganesha_root) == (tmp_path / "flag", None)
    assert plain(tmp_path).defaults_from({}) == plain(tmp_path)


def test_appliance_flag_then_environment(tmp_path: Path) -> None:
    env = {TEMPLATES_ENV: str(tmp_path / "env")}
    assert cli.parse([], env).ganesha_templates == tmp_path / "env"
    assert cli.parse(["--ganesha-templates", str(tmp_path / "flag")], env).ganesha_templates == tmp_path / "flag"
    assert cli.parse([], {}).ganesha_templates is None
