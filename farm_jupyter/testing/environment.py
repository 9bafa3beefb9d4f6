"""A whole offline world for notebooks: loopback Ollama and OpenAI servers, and the embedded
SmolLM2 model for real local answers, exported through the environment variables a kernel reads.

    with LoopbackEnvironment() as env:
        subprocess.run(["pytest", "--nbval-lax", "notebooks/"], env={**os.environ, **env.variables})

`pytest --farm-loopback` does exactly this around a test run (see pytest_plugin.py). A notebook
that should run as `farm-jupyter lab` runs it on a machine with nothing configured (answered by
the embedded model) gets `env.embedded_variables()` on top.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import TracebackType

from .servers import TEST_API_KEY, OllamaServer, OpenAIServer


class LoopbackEnvironment:
    def __init__(self, root: str | os.PathLike[str] | None = None, *, tiny_model: bool = False) -> None:
        """`tiny_model=True` makes the random-weight tiny model the HuggingFace default: fast, for
        tests of the plumbing only; otherwise the HuggingFace provider answers with SmolLM2."""
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
        from ..embedded import models_root

        self.ollama.start()
        self.openai.start()
        self.variables = {
            "OLLAMA_HOST": self.ollama.url,
            "OPENAI_BASE_URL": self.openai.url + "/v1",
            "OPENAI_API_KEY": TEST_API_KEY,
            "FARM_ENV": "development",
            "FARM_CACHE_DIR": str(self.root / "cache"),
            # The responses cache is thrown away with the world; downloaded and converted models are not.
            "FARM_MODELS_DIR": str(models_root()),
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
        if self.tiny_model:
            from ..tiny_model import build_tiny_model, default_tiny_model_dir

            # Shared with other worlds on this machine, so it is built once.
            self.variables["FARM_HF_MODEL"] = str(build_tiny_model(default_tiny_model_dir()))

    @staticmethod
    def embedded_variables() -> dict[str, str]:
        """What `farm-jupyter lab` sets when nothing answers: the embedded model is the default."""
        from .. import embedded

        return {"FARM_AI_PROVIDER": embedded.engine(), "FARM_HF_MODEL": embedded.NAME, "FARM_EMBEDDED_DEFAULT": "1"}

    def stop(self) -> None:
        self.ollama.stop()
        self.openai.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LoopbackEnvironment:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
