"""cli.common: what every subcommand shares — the config with command-line overrides (exit 2 on a bad one),
the gateway's URL and the admin key."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from cli.common import api_key, base_url, err_console, load

ENV = ("GATEHOUSE_CONFIG", "GATEHOUSE_PORT", "GATEHOUSE_HOST", "GATEHOUSE_DATA_DIR", "GATEHOUSE_MASTER_KEY")


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No config file and no Gatehouse variables but the ones a test sets."""
    monkeypatch.chdir(tmp_path)
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def test_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEHOUSE_PORT", "9100")
    assert load(None).settings.port == 9100
    cfg = load(None, port=9000, host=None)  # None: the option was not given
    assert cfg.settings.port == 9000 and cfg.settings.host == "127.0.0.1"


def test_overrides_beat_the_file(tmp_path: Path) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text("gatehouse:\n  port: 8100\n  workers: 3\n")
    cfg = load(str(path), workers=5)
    assert (cfg.settings.port, cfg.settings.workers, cfg.source) == (8100, 5, str(path))


def test_an_invalid_override_exits_2_naming_the_option(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(err_console, "width", 80)  # rich's width when stderr is not a terminal
    with pytest.raises(typer.Exit) as e:
        load(None, port=70000)
    assert e.value.exit_code == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and out.out == ""
    assert lines[0].startswith("config error: --port: ") and "65535" in lines[0]
    assert "Traceback" not in out.err


def test_an_invalid_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(err_console, "width", 1000)  # wide enough for any tmp path (wrapping: the test below)
    path = tmp_path / "bad.yaml"
    path.write_text("gatehouse:\n  workers: 0\n")
    with pytest.raises(typer.Exit) as e:
        load(str(path))
    assert e.value.exit_code == 2
    expected = f"config error: {path}: gatehouse.workers: Input should be greater than or equal to 1 (got 0)\n"
    assert capsys.readouterr().err == expected


def test_a_long_config_error_stays_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(err_console, "width", 80)
    path = tmp_path / "a-config-file-in-a-directory-with-a-long-name.yaml"
    path.write_text("gatehouse:\n  workers: 0\n")
    with pytest.raises(typer.Exit):
        load(str(path))
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_base_url() -> None:
    cfg = load(None, host="0.0.0.0", port=8123)
    assert base_url(cfg, None) == "http://0.0.0.0:8123"
    assert base_url(cfg, "https://gw.example/") == "https://gw.example"
    assert base_url(cfg, "http://10.0.0.5:80///") == "http://10.0.0.5:80"


def test_api_key_explicit_then_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEHOUSE_MASTER_KEY", "sk-configured-master")
    cfg = load(None)
    assert api_key(cfg, "sk-explicit") == "sk-explicit"
    assert api_key(cfg, None) == "sk-configured-master"


def test_api_key_falls_back_to_the_stored_master_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "master_key").write_text("sk-gh-master-stored\n")  # what `gatehouse up` keeps
    monkeypatch.setenv("GATEHOUSE_DATA_DIR", str(data))
    assert api_key(load(None), None) == "sk-gh-master-stored"


def test_api_key_from_a_data_dir_named_in_the_config(tmp_path: Path) -> None:
    data = tmp_path / "elsewhere"
    data.mkdir()
    (data / "master_key").write_text("sk-gh-master-from-file-config")
    path = tmp_path / "gatehouse.yaml"
    path.write_text(f"gatehouse:\n  data_dir: {data}\n")
    assert api_key(load(None), None) == "sk-gh-master-from-file-config"  # ./gatehouse.yaml found by default


def test_no_api_key_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEHOUSE_DATA_DIR", str(tmp_path / "empty"))
    cfg = load(None)
    with pytest.raises(typer.Exit) as e:
        api_key(cfg, None, what="admin key")
    assert e.value.exit_code == 2
    assert "no admin key" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "master_key").write_text("  \n")  # an empty file is no key
    with pytest.raises(typer.Exit):
        api_key(cfg, "")
