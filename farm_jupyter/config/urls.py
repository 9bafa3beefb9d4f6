"""URLs and secrets as settings hold them and messages show them: a host accepted in any of the
forms OLLAMA_HOST allows, a user:password taken out of a URL for basic auth, and what is shown in
its place (`user:***@`, `sk-...f3a9`)."""

from __future__ import annotations

import ipaddress
from urllib.parse import quote, unquote, urlsplit

from pydantic import SecretStr

from .. import secrets


def mask(secret: str | SecretStr | None) -> str | None:
    """`sk-abc...f3a9` -> `sk-...f3a9`: enough to tell keys apart, never enough to use one."""
    if secret is None:
        return None
    return secrets.mask(secret.get_secret_value() if isinstance(secret, SecretStr) else secret)


def mask_url(url: str) -> str:
    """`redis://:pw@host:6379/0` -> `redis://***@host:6379/0`."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """`http://user:pw@host:1` -> (`http://host:1`, `user`, `pw`); unquoted, as basic auth wants."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url, None, None
    user, colon, password = userinfo.partition(":")
    return parts._replace(netloc=hostport).geturl(), unquote(user) or None, unquote(password) if colon else None


def shown_url(url: str, username: str | None = None, password: str | SecretStr | None = None) -> str:
    """The URL to show: credentials in it, or given beside it, as `user:***@`."""
    url, user, pw = split_credentials(url)
    user = user or username
    if not (user or pw or password):
        return url
    parts = urlsplit(url)
    return parts._replace(netloc=f"{quote(user or '', safe='')}:***@{parts.netloc}").geturl()


def is_loopback(url: str) -> bool:
    """Whether `url` names this machine (127.0.0.0/8, ::1, localhost): text sent there stays here."""
    host = urlsplit(url if "://" in url else f"http://{url}").hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalize_url(value: str, *, default_port: int | None = None, name: str = "URL") -> str:
    """Accept `host`, `host:port` or a full URL (OLLAMA_HOST allows all three)."""
    raw = value.strip()
    if not raw or any(c.isspace() for c in raw):
        raise BadValue(name, value, "is not a URL; use e.g. http://127.0.0.1:11434")
    if "://" not in raw:
        raw = "http://" + raw
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadValue(name, value, "is not an http(s) URL; use e.g. http://127.0.0.1:11434")
    try:
        port = parts.port
    except ValueError as exc:
        raise BadValue(name, value, "has a bad port; use e.g. http://127.0.0.1:11434") from exc
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if host == "0.0.0.0":  # what `ollama serve` binds; clients must connect to loopback
        host = "127.0.0.1"
    netloc = f"{host}:{port or default_port}" if (port or default_port) else host
    userinfo = parts.netloc.rpartition("@")[0]
    if userinfo:  # kept for the settings to move into username/password
        netloc = f"{userinfo}@{netloc}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


class BadValue(ValueError):
    """A value that is wrong whatever its origin; load_settings says where it came from."""

    def __init__(self, name: str, value: str, problem: str) -> None:
        self.value = mask_url(value) if "@" in value else value  # a password never goes in a message
        self.problem = problem
        super().__init__(f"{name}={self.value!r} {problem}")
