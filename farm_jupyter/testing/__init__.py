"""Test helpers shipped with farm_jupyter, so notebooks can be tested offline."""

from __future__ import annotations

from .servers import Fault, OllamaServer, OpenAIServer, RecordedRequest, Said, example_of
from .waiting import wait_until

__all__ = ["Fault", "OllamaServer", "OpenAIServer", "RecordedRequest", "Said", "example_of", "wait_until"]
