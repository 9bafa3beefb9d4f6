"""The fold: an answer's chunks turned, once, into what a face draws and what the response keeps.

The router feeds it as each chunk leaves `Router.astream` (on the runtime loop) and reads the
answer's text and reasoning off it for the response and the cache entry; the ChatStream that asked
reads the same object to draw. Nothing else collects an answer's text (a test counts the folds).
"""

from __future__ import annotations

from ..types import Chunk, ToolRun

CUT = "the answer was cut: starting over"  # the status of a restart that gives no reason


class Fold:
    """Text and reasoning so far (less what a restart voided), tool runs, the notice, the status."""

    __slots__ = ("notice", "parts", "restarts", "status", "thoughts", "tool_runs")

    def __init__(self) -> None:
        self.parts: list[str] = []  # the answer's text chunks since the last restart
        self.thoughts: list[str] = []  # its reasoning's, apart
        self.tool_runs: list[ToolRun] = []  # tool calls run so far, as they finish
        self.notice: str | None = None  # the fallback line, as soon as the stream says it
        self.status: str | None = None  # a passing note (a retry, a restart): cleared when text comes
        self.restarts = 0  # times the text shown so far was voided

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def thinking(self) -> str:
        return "".join(self.thoughts)

    def take(self, chunk: Chunk) -> Chunk:
        """Fold `chunk` in; returns it, for `yield fold.take(chunk)`."""
        if chunk.restart:
            self.parts.clear()
            self.thoughts.clear()
            self.restarts += 1
            self.status = chunk.status or CUT
        elif chunk.status:
            self.status = chunk.status
        if chunk.text and not chunk.restart:
            self.parts.append(chunk.text)
            self.status = None
        if chunk.thinking:
            self.thoughts.append(chunk.thinking)
        if chunk.tool_run is not None:
            self.tool_runs.append(chunk.tool_run)
        if chunk.notice:
            self.notice = chunk.notice
        return chunk
