"""Loopback HTTP servers that speak Ollama's and OpenAI's wire protocols, for offline tests.

    with OllamaServer() as srv:                      # 127.0.0.1, ephemeral port
        srv.add_fault(Fault("status", path="/api/chat", status=503))
        ...                                          # point a client at srv.url
        assert srv.count("/api/chat") == 1

Standard library only: a threading HTTP/1.1 server with keep-alive (`transport`), the lifecycle,
request record and fault handling both servers share (`loopback`, `faults`), what the loopback
model answers (`answers`), and one module a protocol (`ollama_api`, `openai_api`).
"""

from __future__ import annotations

from .answers import Said, example_of
from .faults import Fault
from .loopback import RecordedRequest
from .ollama_api import OllamaServer
from .openai_api import TEST_API_KEY as TEST_API_KEY
from .openai_api import OpenAIServer

__all__ = ["Fault", "OllamaServer", "OpenAIServer", "RecordedRequest", "Said", "example_of"]
