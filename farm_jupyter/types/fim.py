"""Fill-in-the-middle: what a completion as you type asks for (the text around the cursor)."""

from __future__ import annotations

from pydantic import Field

from .messages import BaseType, ChatMessage

# What a model without FIM tokens is told: the answer goes straight into the cell.
FILL_SYSTEM = (
    "You complete code at a cursor. Reply with only the text that goes at <CURSOR>: no explanation, "
    "no backticks, nothing repeated from before or after the cursor. Reply with nothing if nothing fits."
)


class FillRequest(BaseType):
    """The text before and after the cursor, and the cells above it (already masked of secrets)."""

    prefix: str
    suffix: str = ""
    context: str = Field(default="", description="The cells above, oldest first, joined by blank lines.")
    model: str = ""
    max_tokens: int = Field(default=64, gt=0)
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    stop: list[str] = Field(default_factory=list)
    language: str = "python"

    @property
    def fim_prompt(self) -> str:
        """The prompt a FIM endpoint completes: the cells above, then the text before the cursor."""
        return f"{self.context}\n\n{self.prefix}" if self.context else self.prefix

    def chat_messages(self) -> list[ChatMessage]:
        """The same request as a chat, for a model without FIM tokens."""
        above = f"Cells above:\n```{self.language}\n{self.context}\n```\n\n" if self.context else ""
        cell = f"The cell:\n```{self.language}\n{self.prefix}<CURSOR>{self.suffix}\n```\n\nThe text at <CURSOR>:"
        return [ChatMessage(role="system", content=FILL_SYSTEM), ChatMessage(role="user", content=above + cell)]
