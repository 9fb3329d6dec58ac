"""A scripted chat model: the only fake in the agent tests.

Each turn's reply comes from `script`, a function of the messages the model
was sent (so tests can answer from a tool result), and every input is recorded
so tests can check exactly what the model saw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import PrivateAttr


class ScriptedChatModel(BaseChatModel):
    script: Callable[[list[BaseMessage]], AIMessage]
    _inputs: list[list[BaseMessage]] = PrivateAttr(default_factory=list)
    _tools: list[str] = PrivateAttr(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def inputs(self) -> list[list[BaseMessage]]:
        return self._inputs

    @property
    def bound_tools(self) -> list[str]:
        return self._tools

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:
        bound = ScriptedChatModel(script=self.script)
        bound._inputs = self._inputs  # one record of inputs, whichever binding was called
        bound._tools = [t.name for t in tools]
        return bound

    def _generate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        self._inputs.append(list(messages))
        return ChatResult(generations=[ChatGeneration(message=self.script(list(messages)))])

    def _stream(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        self._inputs.append(list(messages))
        reply = self.script(list(messages))
        if reply.tool_calls:
            yield ChatGenerationChunk(message=AIMessageChunk(content=reply.content, tool_call_chunks=[
                {"name": c["name"], "args": __import__("json").dumps(c["args"]), "id": c["id"], "index": i}
                for i, c in enumerate(reply.tool_calls)
            ]))
            return
        for word in str(reply.content).split(" "):
            chunk = ChatGenerationChunk(message=AIMessageChunk(word + " "))
            if run_manager:
                run_manager.on_llm_new_token(word + " ", chunk=chunk)
            yield chunk


def echo(messages: list[BaseMessage]) -> AIMessage:
    """Replies with the count of human messages it was shown and the last one's text."""
    humans = [m for m in messages if m.type == "human"]
    return AIMessage(f"reply {len(humans)}: {humans[-1].content if humans else ''}")
