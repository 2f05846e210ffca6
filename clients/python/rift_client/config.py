"""Where ``riftctl`` finds the service's URL, the API key and its timeouts.

Each comes from, first found: the command-line flag (``--url``, ``--api-key``, ``--timeout-http``,
``--upload-timeout``), the environment (``RIFT_API_URL``, ``RIFT_API_KEY``; none for the
timeouts), the config file, the default (``http://127.0.0.1:8000``; no key; 60 s; 900 s). The
config file is ``RIFTCTL_CONFIG`` when set (it must then exist), else
``$XDG_CONFIG_HOME/riftctl/config.toml`` (``~/.config/riftctl/config.toml``) when it exists::

    api_url = "https://rift.example.internal"
    api_key = "rift_..."
    timeout = 60             # seconds to connect, and between two reads or writes
    upload_timeout = 900     # seconds an upload waits for its answer (the service's check)

Keep it readable by you alone (``chmod 600``): it holds a secret.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rift_client.client import DEFAULT_BASE_URL, DEFAULT_UPLOAD_TIMEOUT_S

CONFIG_ENV = "RIFTCTL_CONFIG"
KNOWN_KEYS = frozenset({"api_url", "api_key", "timeout", "upload_timeout"})
DEFAULT_TIMEOUT_S = 60.0


class ConfigError(Exception):
    """The config file is missing (when named explicitly), unreadable or invalid."""


@dataclass(frozen=True)
class CliConfig:
    api_url: str
    #: Out of repr(): a debugging print or a traceback's locals would show the key.
    api_key: str | None = field(repr=False)
    timeout: float
    upload_timeout: float
    source: Path | None
    #: Where ``api_url`` and ``api_key`` came from, in words ("RIFT_API_URL", "--api-key",
    #: "api_url in ~/.config/riftctl/config.toml"); None for a key given nowhere. An error
    #: about the URL or the key names them: a stale RIFT_API_URL or key left in a shell is
    #: the usual cause, and the user may not know which of the four places was read.
    api_url_origin: str = "the default"
    api_key_origin: str | None = None


def config_path(env: Mapping[str, str]) -> tuple[Path | None, bool]:
    """The config file to read and whether it was named explicitly (so must exist)."""
    named = env.get(CONFIG_ENV)
    if named:
        return Path(named).expanduser(), True
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "riftctl" / "config.toml", False


def read_config_file(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the config file {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        # A near miss (apikey, api-url, upload_timout) is named: ignoring it, as before this
        # check, sent no key, and a list of four names still left the reader to compare.
        guesses = [f"{key!r} → {guess[0]!r}" for key in unknown
                   if (guess := difflib.get_close_matches(key.replace("-", "_").lower(),
                                                          sorted(KNOWN_KEYS), n=1, cutoff=0.75))]
        meant = f" (did you mean {', '.join(guesses)}?)" if guesses else ""
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in {path}{meant}; known: "
                          f"{', '.join(sorted(KNOWN_KEYS))}")
    for key in ("api_url", "api_key"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"'{key}' in {path} must be a string")
    for key in ("timeout", "upload_timeout"):
        if key in data and (isinstance(data[key], bool) or not isinstance(data[key], int | float)
                            or data[key] <= 0):
            raise ConfigError(f"'{key}' in {path} must be a positive number of seconds")
    return data


def _seconds(value: object, default: float) -> float:
    return float(value) if isinstance(value, int | float) else default


def resolve_config(*, url: str | None, api_key: str | None, timeout: float | None,
                   upload_timeout: float | None = None,
                   env: Mapping[str, str] | None = None) -> CliConfig:
    """The settings ``riftctl`` runs with (see the module docstring for the order)."""
    env = os.environ if env is None else env
    path, explicit = config_path(env)
    data: dict[str, object] = {}
    source = None
    if path is not None and (explicit or path.is_file()):
        data = read_config_file(path)
        source = path
    file_url = data.get("api_url")
    file_key = data.get("api_key")
    api_url, api_url_origin = _first_given(
        (url, "--url"), (env.get("RIFT_API_URL"), "RIFT_API_URL"),
        (file_url if isinstance(file_url, str) else None, f"api_url in {source}"))
    chosen_key, api_key_origin = _first_given(
        (api_key, "--api-key"), (env.get("RIFT_API_KEY"), "RIFT_API_KEY"),
        (file_key if isinstance(file_key, str) else None, f"api_key in {source}"))
    return CliConfig(
        api_url=api_url or DEFAULT_BASE_URL,
        api_key=chosen_key,
        timeout=timeout or _seconds(data.get("timeout"), DEFAULT_TIMEOUT_S),
        upload_timeout=upload_timeout or _seconds(data.get("upload_timeout"),
                                                  DEFAULT_UPLOAD_TIMEOUT_S),
        source=source,
        api_url_origin=api_url_origin or f"the default, {DEFAULT_BASE_URL} (no --url, RIFT_API_URL "
                                          "or api_url in a config file)",
        api_key_origin=api_key_origin,
    )


def _first_given(*candidates: tuple[str | None, str]) -> tuple[str | None, str | None]:
    """The first value that is set (not None or empty) and where it came from."""
    for value, origin in candidates:
        if value:
            return value, origin
    return None, None
