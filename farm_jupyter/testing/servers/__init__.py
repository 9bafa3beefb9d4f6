"""Loopback HTTP servers that speak Ollama's and OpenAI's wire protocols, for offline tests.

    with OllamaServer() as srv:                      # 127.0.0.1, ephemeral port
        srv.add_fault(Fault("status", path="/api/chat", status=503))
        ...                                          # point a client at srv.url
        assert srv.count("/api/chat") == 1

Standard library only: a threading HTTP/1.1 server with keep-alive (`transport`), the lifecycle,
request record and fault handling both servers share (`base`, `faults`), what the loopback model
answers (`answers`), and one module a protocol (`ollama`, `openai`).
"""

from __future__ import annotations

from .answers import Said, example_of
from .base import RecordedRequest
from .faults import Fault
from .ollama import OllamaServer
from .openai import TEST_API_KEY as TEST_API_KEY
from .openai import OpenAIServer

__all__ = ["Fault", "OllamaServer", "OpenAIServer", "RecordedRequest", "Said", "example_of"]
