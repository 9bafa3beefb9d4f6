"""A conversation's turns: what the next request sends back, committed only when an answer is whole."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..types import ChatMessage, ChatResponse, ImagePart


@dataclass
class Turn:
    id: str
    user: ChatMessage
    assistant: ChatMessage
    address: str
    at: float


class Conversation:
    """Turns of one conversation. A re-run turn (same id) replaces its old self in place.

    Only finished answers are committed: a failed or stopped request leaves the history as it was.
    """

    def __init__(self, max_turns: int = 50, system: str | None = None) -> None:
        self.max_turns = max_turns
        self.system = system
        self.turns: list[Turn] = []
        self._lock = threading.Lock()
        self._counter = 0

    def messages_for(
        self, prompt: str, turn_id: str | None = None, system: str | None = None, images: Sequence[ImagePart] = ()
    ) -> list[ChatMessage]:
        with self._lock:
            turns = list(self.turns)
        if turn_id is not None:
            ids = [t.id for t in turns]
            if turn_id in ids:
                turns = turns[: ids.index(turn_id)]
        messages: list[ChatMessage] = []
        if system or self.system:
            messages.append(ChatMessage(role="system", content=system or self.system or ""))
        for t in turns[-self.max_turns :]:
            messages += [t.user, t.assistant]
        messages.append(ChatMessage(role="user", content=prompt, images=list(images)))
        return messages

    def commit(
        self, question: ChatMessage, response: ChatResponse, turn_id: str | None = None, *, keep_thinking: bool = False
    ) -> Turn:
        """The turn as the next request sends it back: the question as it was sent (the images
        asked about stay with it); the model's thinking only when asked to (`keep_thinking`)."""
        with self._lock:
            self._counter += 1
            thinking = response.thinking if keep_thinking else None
            turn = Turn(
                id=turn_id or f"turn-{self._counter}",
                user=question,
                assistant=ChatMessage(role="assistant", content=response.text, thinking=thinking),
                address=response.address,
                at=time.time(),
            )
            for i, t in enumerate(self.turns):
                if t.id == turn.id:
                    self.turns[i] = turn
                    break
            else:
                self.turns.append(turn)
                del self.turns[: -self.max_turns]
            return turn

    def reset(self, system: str | None = None) -> None:
        with self._lock:
            self.turns.clear()
            self.system = system

    def __len__(self) -> int:
        return len(self.turns)

    def to_messages(self) -> list[ChatMessage]:
        with self._lock:
            return [m for t in self.turns for m in (t.user, t.assistant)]
