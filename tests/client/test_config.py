"""Where ``riftctl`` takes the URL, the key and the timeouts from: flag, environment, config file,
default, in that order; a broken config file is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from rift_client.client import DEFAULT_BASE_URL, DEFAULT_UPLOAD_TIMEOUT_S
from rift_client.config import ConfigError, resolve_config


def test_precedence(tmp_path: Path) -> None:
    path = tmp_path / "riftctl.toml"
    path.write_text('api_url = "http://file:1"\napi_key = "rift_file"\ntimeout = 5\n'
                    'upload_timeout = 1800\n')
    env = {"RIFTCTL_CONFIG": str(path)}
    from_file = resolve_config(url=None, api_key=None, timeout=None, env=env)
    assert (from_file.api_url, from_file.api_key, from_file.timeout,
            from_file.upload_timeout) == ("http://file:1", "rift_file", 5.0, 1800.0)
    assert from_file.source == path
    from_env = resolve_config(url=None, api_key=None, timeout=None,
                              env={**env, "RIFT_API_URL": "http://env:2", "RIFT_API_KEY": "rift_env"})
    assert (from_env.api_url, from_env.api_key) == ("http://env:2", "rift_env")
    from_flags = resolve_config(url="http://flag:3", api_key="rift_flag", timeout=9,
                                upload_timeout=60, env={**env, "RIFT_API_URL": "http://env:2"})
    assert (from_flags.api_url, from_flags.api_key, from_flags.timeout,
            from_flags.upload_timeout) == ("http://flag:3", "rift_flag", 9, 60)


def test_defaults_and_the_default_file(tmp_path: Path) -> None:
    nothing = resolve_config(url=None, api_key=None, timeout=None,
                             env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert (nothing.api_url, nothing.api_key, nothing.source) == (DEFAULT_BASE_URL, None, None)
    assert (nothing.timeout, nothing.upload_timeout) == (60.0, DEFAULT_UPLOAD_TIMEOUT_S)
    default = tmp_path / "riftctl" / "config.toml"
    default.parent.mkdir()
    default.write_text('api_key = "rift_default"\n')
    found = resolve_config(url=None, api_key=None, timeout=None,
                           env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert found.api_key == "rift_default" and found.source == default


@pytest.mark.parametrize(("text", "message"), [
    ("api_url = ", "not valid TOML"),
    ('api_url = "x"\nkey = "y"\n', "unknown key(s) key"),
    ("api_key = 3\n", "'api_key'"),
    ("timeout = -1\n", "positive number"),
    ("timeout = true\n", "positive number"),
    ('upload_timeout = "15m"\n', "'upload_timeout'"),
    ("upload_timeout = 0\n", "positive number"),
])
def test_invalid_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "riftctl.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_config(url=None, api_key=None, timeout=None, env={"RIFTCTL_CONFIG": str(path)})


def test_a_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_config(url=None, api_key=None, timeout=None,
                       env={"RIFTCTL_CONFIG": str(tmp_path / "absent.toml")})


def test_it_says_where_the_url_and_the_key_came_from(tmp_path: Path) -> None:
    """riftctl names the place in the errors a wrong URL or key causes (a stale RIFT_API_URL
    or key left in the shell, a forgotten config file)."""
    path = tmp_path / "riftctl.toml"
    path.write_text('api_url = "http://file:1"\napi_key = "rift_file"\n')
    env = {"RIFTCTL_CONFIG": str(path)}
    from_file = resolve_config(url=None, api_key=None, timeout=None, env=env)
    assert (from_file.api_url_origin, from_file.api_key_origin) == (
        f"api_url in {path}", f"api_key in {path}")
    from_env = resolve_config(url=None, api_key=None, timeout=None,
                              env={**env, "RIFT_API_URL": "http://env:2", "RIFT_API_KEY": "k"})
    assert (from_env.api_url_origin, from_env.api_key_origin) == ("RIFT_API_URL", "RIFT_API_KEY")
    from_flags = resolve_config(url="http://flag:3", api_key="rift_flag", timeout=None, env=env)
    assert (from_flags.api_url_origin, from_flags.api_key_origin) == ("--url", "--api-key")
    nothing = resolve_config(url=None, api_key=None, timeout=None,
                             env={"XDG_CONFIG_HOME": str(tmp_path), "RIFT_API_URL": ""})
    assert nothing.api_url_origin.startswith(f"the default, {DEFAULT_BASE_URL}")
    assert nothing.api_key_origin is None


@pytest.mark.parametrize(("text", "meant"), [
    ('apikey = "rift_x"\n', "'apikey' → 'api_key'"),
    ('api-url = "http://h:1"\n', "'api-url' → 'api_url'"),
    ("upload_timout = 60\n", "'upload_timout' → 'upload_timeout'"),
])
def test_a_near_miss_of_a_key_names_the_key_meant(tmp_path: Path, text: str, meant: str) -> None:
    path = tmp_path / "riftctl.toml"
    path.write_text(text)
    # Before: the unknown key and the four known ones, the reader left to compare them.
    with pytest.raises(ConfigError) as caught:
        resolve_config(url=None, api_key=None, timeout=None, env={"RIFTCTL_CONFIG": str(path)})
    assert f"(did you mean {meant}?)" in str(caught.value)


def test_the_key_is_out_of_the_configs_repr(tmp_path: Path) -> None:
    path = tmp_path / "riftctl.toml"
    path.write_text('api_key = "rift_abc_from-the-file"\n')
    for config in (resolve_config(url=None, api_key="rift_abc_from-a-flag", timeout=None, env={}),
                   resolve_config(url=None, api_key=None, timeout=None,
                                  env={"RIFTCTL_CONFIG": str(path)})):
        assert config.api_key and config.api_key not in repr(config)
        assert config.api_key not in str(config) and "api_url=" in repr(config)
