"""A whole offline world for notebooks: loopback Ollama and OpenAI servers plus the tiny model,
exported through the environment variables a kernel reads.

    with LoopbackEnvironment() as env:
        subprocess.run(["pytest", "--nbval-lax", "notebooks/"], env={**os.environ, **env.variables})

`pytest --farm-loopback` does exactly this around a test run (see pytest_plugin.py).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import TracebackType

from .servers import TEST_API_KEY, OllamaServer, OpenAIServer


class LoopbackEnvironment:
    def __init__(self, root: str | os.PathLike[str] | None = None, *, tiny_model: bool = True) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="farm-loopback-")
            root = self._tmp.name
        self.root = Path(root)
        self.tiny_model = tiny_model
        self.ollama = OllamaServer()
        self.openai = OpenAIServer(api_key=TEST_API_KEY)
        self.variables: dict[str, str] = {}

    def start(self) -> LoopbackEnvironment:
        try:
            self._start()
        except BaseException:
            self.stop()  # a half-started world leaves no server running
            raise
        return self

    def _start(self) -> None:
        self.ollama.start()
        self.openai.start()
        self.variables = {
            "OLLAMA_HOST": self.ollama.url,
            "OPENAI_BASE_URL": self.openai.url + "/v1",
            "OPENAI_API_KEY": TEST_API_KEY,
            "FARM_ENV": "development",
            "FARM_CACHE_DIR": str(self.root / "cache"),
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
        if self.tiny_model:
            from ..tiny_model import build_tiny_model, default_tiny_model_dir

            # Shared with the embedded default, so a machine builds it once.
            self.variables["FARM_HF_MODEL"] = str(build_tiny_model(default_tiny_model_dir()))

    def stop(self) -> None:
        self.ollama.stop()
        self.openai.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LoopbackEnvironment:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
