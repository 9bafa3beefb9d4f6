"""Which models an HTTP request may name: the server's allowlist.

The kernel API trusts its user (it is their disk); the server trusts no body. Over HTTP a model is
one the server can name:

- a remote provider's (Ollama, OpenAI, a custom one) own listed models, the listing kept for at
  most `LISTING_TTL` seconds; its configured default and the aliases that point at it (a server
  without a model list allows only those);
- for a local engine (huggingface, llamacpp): the embedded model when it is installed, the
  configured default when it is a file or folder on disk, and files under the folders configured
  for it (`[huggingface] models_dir`, `[providers.llamacpp] models_dir`; none by default),
  compared after resolving links. A name that is no path is looked up inside those folders; a hub
  id is never fetched.

The model name is checked after the provider prefix (no `.` or `..` segment; no `host[:port]/`
registry prefix for Ollama unless `[ollama] allow_registries`). Anything else is refused with one
text, whatever exists on disk, and the "did you mean" names only allowed models. An allowed local
model is answered under its resolved path, so every spelling of it shares one loaded copy.
"""

from __future__ import annotations

import difflib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import embedded
from ..errors import FarmError, ModelNotFound

if TYPE_CHECKING:
    from ..sessions import Session
    from ..types import ModelInfo

LLAMACPP_CONTEXT = 2048  # llama.cpp's n_ctx when [providers.llamacpp] sets none (providers/llamacpp.py)
LISTING_TTL = 60.0  # seconds a provider's model list is trusted
LOCAL = frozenset({"huggingface", "llamacpp"})  # engines whose model names are files on this machine
_REMOTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")
_REGISTRY = re.compile(r"^(localhost|[^/]*[.:][^/]*)/")  # Docker's rule: a first part with `.` or `:` is a host
_PATHLIKE = ("/", "~")


class NotAllowed(ValueError):
    """A name refused before anything is asked (a bad segment, a registry host): a 400."""


@dataclass(frozen=True)
class Admitted:
    provider: str
    model: str
    local: bool  # loads into this process: counted as a load job
    window: int | None = None  # the model's context in tokens, where the server knows it

    @property
    def address(self) -> str:
        return f"{self.provider}:{self.model}"


def check_segments(model: str) -> None:
    """No empty, `.` or `..` path segment after the provider prefix (in `ollama:../x` the prefix
    hid it from the URL's check); a local path may start with `/`."""
    if any(part in ("", ".", "..") for part in model.removeprefix("/").split("/")):
        raise NotAllowed("a model name has no '.', '..' or empty path parts")


def folders(session: Session, provider: str) -> list[Path]:
    """The folders a local engine's models may come from over HTTP, links resolved (none by default)."""
    settings = session.settings
    if provider == "huggingface":
        configured = getattr(settings.huggingface, "models_dir", None)
    else:
        section = getattr(settings, provider, None)
        configured = getattr(section, "models_dir", None) or settings.providers.get(provider, {}).get("models_dir")
    if not configured:
        return []
    values = configured if isinstance(configured, list) else [configured]
    return [Path(str(v)).expanduser().resolve() for v in values]


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


class Allowlist:
    """The models this server offers, per provider; `admit` checks one name against it."""

    def __init__(self, ttl: float = LISTING_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._lists: dict[str, tuple[float, list[str] | None]] = {}

    def forget(self, provider: str) -> None:
        """A load changed what the provider has: read its list again next time."""
        self._lists.pop(provider, None)

    def kept(self, provider: str) -> tuple[bool, list[str] | None]:
        """(fresh, names): the provider's listing as last read, and whether it is still trusted."""
        kept = self._lists.get(provider)
        if kept is not None and self._clock() - kept[0] < self.ttl:
            return True, kept[1]
        return False, None

    async def listed(self, session: Session, provider: str) -> list[str] | None:
        """The provider's own model names (None: it has no list, or it could not be read)."""
        fresh, names = self.kept(provider)
        if fresh:
            return names
        try:
            names = [m.name for m in await session.aio.models(provider)]
        except FarmError:
            names = None
        self._lists[provider] = (self._clock(), names)
        return names

    async def admit(self, session: Session, target: str | None, *, pull: bool = False) -> Admitted:
        """The (provider, model) an HTTP request may use for `target`; NotAllowed or ModelNotFound
        (one text) otherwise. `pull`: the load route may also pull an Ollama library name."""
        known = self.known(session, target, pull=pull)
        if known is not None:
            return known
        provider, _, model = session.resolve(target, strict=True).partition(":")
        return self._listed(provider, model, await self.listed(session, provider), self._configured(session, provider))

    def known(self, session: Session, target: str | None, *, pull: bool = False) -> Admitted | None:
        """`admit` without asking anyone: the answer, or the refusal, where the name, the folders,
        the configuration or a fresh listing settle it; None where the listing must be read. A
        handler calls this on its own loop and goes to the runtime loop only for the rest."""
        provider, _, model = session.resolve(target, strict=True).partition(":")
        check_segments(model)
        if provider in LOCAL:
            window = int(_option(session, provider, "n_ctx") or LLAMACPP_CONTEXT) if provider == "llamacpp" else None
            return Admitted(provider, self._local(session, provider, model), local=True, window=window)
        if not _REMOTE_NAME.fullmatch(model):
            raise NotAllowed("a model name is letters, digits and ._:/@+-, like ollama:llama3.1")
        registries = bool(getattr(session.settings.ollama, "allow_registries", False))
        if provider == "ollama" and _REGISTRY.match(model) and not registries:
            raise NotAllowed(
                "a model name names no registry host (host:port/...): the server's [ollama] allow_registries is off"
            )
        configured = self._configured(session, provider)
        if _same(provider, model, configured) or (pull and provider == "ollama"):
            return Admitted(provider, model, local=False)
        fresh, listed = self.kept(provider)
        return self._listed(provider, model, listed, configured) if fresh else None

    def _listed(self, provider: str, model: str, listed: list[str] | None, configured: list[str]) -> Admitted:
        if _same(provider, model, listed or []):
            return Admitted(provider, model, local=False)
        raise self.refusal(provider, model, [*(listed or []), *configured])

    def offered(self, session: Session, models: list[ModelInfo]) -> list[ModelInfo]:
        """A listing as HTTP may show it: a local engine's files outside its folders (converted
        copies, downloads) are left out; they could not be asked for anyway."""
        shown = []
        for m in models:
            if m.provider in LOCAL:
                try:
                    self._local(session, m.provider, m.name)
                except FarmError:
                    continue
            shown.append(m)
        return shown

    @staticmethod
    def _configured(session: Session, provider: str) -> list[str]:
        """The provider's configured default and the models its aliases name."""
        names = [session.settings.default_model_of(provider) or ""]
        for alias in session.settings.aliases:
            try:
                head, _, model = session.resolve(alias, strict=True).partition(":")
            except FarmError:
                continue
            if head == provider:
                names.append(model)
        return [n for n in names if n]

    def _local(self, session: Session, provider: str, model: str) -> str:
        """The resolved path (or the embedded model's name) of an allowed local model."""
        if embedded.is_embedded(model):
            if embedded.find() is None:
                raise ModelNotFound(
                    f"the embedded model {embedded.NAME} is not installed on this server",
                    provider=provider,
                    hint=f"on the server: {embedded.INSTALL_HINT}",
                )
            return embedded.NAME
        roots = folders(session, provider)
        default = session.settings.default_model_of(provider) or _option(session, provider, "default_model")
        candidates: list[Path] = []
        if model.startswith(_PATHLIKE):
            candidates.append(Path(model).expanduser())
        else:
            candidates += [root / model for root in roots]
        for candidate in candidates:
            resolved = candidate.resolve()
            if resolved.exists() and (_inside(resolved, roots) or _is_default(resolved, default)):
                return str(resolved)
        raise self.refusal(provider, model, _local_names(roots))

    @staticmethod
    def refusal(provider: str, model: str, offered: list[str]) -> ModelNotFound:
        """The one answer for a model this server does not offer, however it was spelled."""
        close = difflib.get_close_matches(model, sorted(set(offered)), n=3, cutoff=0.5)
        more = f"did you mean {', '.join(close)}? " if close else ""
        return ModelNotFound(
            f'no model "{model}" on {provider} that this server offers',
            provider=provider,
            hint=f"{more}GET models lists what it has",
        )


def _option(session: Session, provider: str, key: str) -> str | None:
    value: Any = session.settings.providers.get(provider, {}).get(key)
    return None if value is None else str(value)


def _is_default(path: Path, default: str | None) -> bool:
    return (
        bool(default) and not embedded.is_embedded(default or "") and Path(default or "").expanduser().resolve() == path
    )


def same_model(provider: str, a: str, b: str) -> bool:
    return _same(provider, a, [b])


def _same(provider: str, model: str, names: list[str]) -> bool:
    if provider == "ollama":
        return _tagged(model) in {_tagged(n) for n in names}
    return model in names


def _tagged(model: str) -> str:
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


def _local_names(roots: list[Path]) -> list[str]:
    """What a refusal may suggest for a local engine: the embedded model and the folders' entries
    that stay inside them, by their names there (never a path)."""
    names = [embedded.NAME] if embedded.find() is not None else []
    for root in roots:
        if root.is_dir():
            names += sorted(p.name for p in root.iterdir() if _inside(p.resolve(), roots))[:200]
    return names
