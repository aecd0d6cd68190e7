"""Where the CLI keeps its login: {url, token[, admin_key]} in the user's config dir.

The file is `typer.get_app_dir("billfold")/config.json` (BILLFOLD_CONFIG_DIR names another
folder, for tests and scripts), written with mode 0600 in a folder of mode 0700: it holds
bearer credentials. BILLFOLD_URL, BILLFOLD_TOKEN and BILLFOLD_ADMIN_KEY override what is
stored; a command's own --url / --token / --admin-key override both.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

DEFAULT_URL = "http://127.0.0.1:8000"
CONFIG_NAME = "config.json"


def config_dir() -> Path:
    override = os.environ.get("BILLFOLD_CONFIG_DIR")
    return Path(override) if override else Path(typer.get_app_dir("billfold"))


def config_path() -> Path:
    return config_dir() / CONFIG_NAME


def load_config() -> dict[str, Any]:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def save_config(data: dict[str, Any]) -> Path:
    """Write the config atomically: a 0600 temporary file in the 0700 folder, renamed."""
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    path = folder / CONFIG_NAME
    tmp = folder / f".{CONFIG_NAME}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def clear_config() -> bool:
    """Forget the stored login; whether there was one."""
    path = config_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


class ConfigError(Exception):
    """The CLI cannot tell which server or credential to use."""


@dataclass(frozen=True)
class Target:
    url: str
    token: str | None
    admin_key: str | None


def resolve(
    url: str | None = None, token: str | None = None, admin_key: str | None = None
) -> Target:
    """Option, then environment, then the stored config (then the default URL)."""
    stored = load_config()
    return Target(
        url=(url or os.environ.get("BILLFOLD_URL") or stored.get("url") or DEFAULT_URL).rstrip("/"),
        token=token or os.environ.get("BILLFOLD_TOKEN") or stored.get("token"),
        admin_key=admin_key or os.environ.get("BILLFOLD_ADMIN_KEY") or stored.get("admin_key"),
    )
