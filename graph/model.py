"""The chat model: ChatOpenAI from the settings, or the offline stand-in.

Errors from the model's server become `ModelError`, one sentence a person can
act on; the user's message is already in the thread when it is raised, so the
turn can be retried (`graph.invoke(None, config)`) without sending it twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from graph.settings import CONNECT_HINT, Settings
from graph.summary import SUMMARY_HEADING
from graph.trimming import message_text

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """The model could not answer; `str()` is one sentence for the user."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def make_model(settings: Settings) -> BaseChatModel:
    """ChatOpenAI when a model is configured, otherwise the offline model."""
    if not settings.model_connected:
        return OfflineChatModel()
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=settings.model,
        api_key=settings.api_key or "not-needed",  # local servers (Ollama, vLLM) take any key
        base_url=settings.base_url,
        temperature=settings.temperature,
        timeout=settings.timeout_s,
        max_retries=settings.max_retries,  # the OpenAI client backs off on 408/409/429/5xx
        stream_usage=True,
    )


def make_summary_model(settings: Settings) -> BaseChatModel | None:
    """ChatOpenAI for summaries (`THREADKEEPER_SUMMARY_MODEL`, else the chat model), or
    None when no model is connected (summaries are then extractive)."""
    if not settings.model_connected:
        return None
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=settings.summary_model or settings.model,
        api_key=settings.api_key or "not-needed",
        base_url=settings.base_url,
        temperature=0,
        timeout=settings.timeout_s,
        max_retries=settings.max_retries,
        max_tokens=settings.summary_budget,
    )


def explain_failure(exc: BaseException, settings: Settings) -> ModelError | None:
    """The one-sentence ModelError for a failure of the model's server, or None."""
    try:
        import openai
    except ImportError:  # pragma: no cover - langchain-openai depends on it
        return None
    saved = "Your message is saved; retry to send it again."
    where = settings.base_url or "api.openai.com"
    if isinstance(exc, openai.APITimeoutError):
        return ModelError(f"The model did not answer within {settings.timeout_s:g} s. {saved}", reason="timeout")
    if isinstance(exc, openai.APIConnectionError):
        return ModelError(f"Could not reach the model server at {where}. {saved}", reason="unreachable")
    if isinstance(exc, openai.RateLimitError):
        return ModelError(
            f"The model server is rate-limiting requests (HTTP 429) and still was after "
            f"{settings.max_retries} retries. {saved}",
            reason="rate_limit",
        )
    if isinstance(exc, openai.AuthenticationError):
        return ModelError(f"The model server at {where} refused the API key (HTTP 401); check OPENAI_API_KEY.", reason="auth")
    if isinstance(exc, openai.NotFoundError):
        return ModelError(
            f"The model server at {where} does not know the model {settings.model!r} (HTTP 404); check THREADKEEPER_MODEL.",
            reason="not_found",
        )
    if isinstance(exc, openai.APIStatusError):
        return ModelError(f"The model server failed with HTTP {exc.status_code}. {saved}", reason="server_error")
    return None


def invoke_model(model: Any, messages: Sequence[BaseMessage], config: Any, settings: Settings) -> AIMessage:
    try:
        return model.invoke(list(messages), config)
    except Exception as exc:
        explained = _logged(explain_failure(exc, settings), exc)
        if explained is None:
            raise
        raise explained from exc


async def ainvoke_model(model: Any, messages: Sequence[BaseMessage], config: Any, settings: Settings) -> AIMessage:
    """`invoke_model` on the model's async client: cancelling the caller's task
    (the web chat's Stop) closes the connection to the model's server at once."""
    try:
        return await model.ainvoke(list(messages), config)
    except Exception as exc:
        explained = _logged(explain_failure(exc, settings), exc)
        if explained is None:
            raise
        raise explained from exc


def _logged(explained: ModelError | None, exc: Exception) -> ModelError | None:
    if explained is not None:
        log.warning("model call failed: %r", exc)
    return explained


class OfflineChatModel(BaseChatModel):
    """Answers every message by saying that no model is connected, and how to connect one.

    Memory still works in this mode: the reply quotes the message it received
    and counts what the model would have seen, so a person can tell the thread
    is being kept. `setup_hint=False` leaves out how to connect a model, for a
    door that says it once elsewhere (the web chat's banner).
    """

    setup_hint: bool = True

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> OfflineChatModel:
        return self

    @property
    def _llm_type(self) -> str:
        return "threadkeeper-offline"

    def _reply(self, messages: list[BaseMessage]) -> str:
        humans = [m for m in messages if isinstance(m, HumanMessage)]
        said = " ".join(message_text(humans[-1]).split()) if humans else ""
        if len(said) > 80:
            said = said[:79] + "…"
        summarised = bool(messages) and SUMMARY_HEADING in message_text(messages[0])
        return (
            f"No language model is connected, so this is an automatic reply. "
            f"Your message \"{said}\" is saved in this thread, with {len(humans)} of your messages in view"
            + (" and a summary of the earlier ones." if summarised else ".")
            + (f" {CONNECT_HINT}" if self.setup_hint else "")
        )

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        text = self._reply(messages)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(text, response_metadata={"model_name": "offline"}))])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        words = self._reply(messages).split(" ")
        for i, word in enumerate(words):
            piece = word if i == len(words) - 1 else word + " "
            chunk = ChatGenerationChunk(message=AIMessageChunk(piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield ChatGenerationChunk(message=AIMessageChunk("", response_metadata={"model_name": "offline"}, chunk_position="last"))
