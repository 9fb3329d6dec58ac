"""The chat graph: trim -> model (-> tools -> trim -> model)*.

The trimming node also brings the thread's memory beyond the window up to date
(a running summary and kept facts, `graph/summary.py`); the model node, once
its final reply is ready, may start the summary's next part in the background.
Nothing of the summary is on the reply's path: the run ends when the reply is saved.

    from graph import build_graph
    app = build_graph(checkpointer=saver)
    app.invoke({"messages": [("user", "hi")]}, {"configurable": {"thread_id": "t1", "user_id": "alice"}})

The graph never imports the store: it is compiled with whatever saver it is
given. A saver that has an `attachment_database(thread_id)` method (a file
path, or the decrypted bytes of an encrypted store's file) or an
`attachment_path(thread_id)` method (this project's has both) gives the model
the database tools for threads with a database attached.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.constants import CONFIG_KEY_CHECKPOINTER
from langgraph.graph import END, START, StateGraph
from langgraph.prebuilt import ToolNode

from graph.model import ainvoke_model, invoke_model, make_model, make_summary_model
from graph.settings import Settings
from graph.state import ChatState
from graph.summary import Summarizer, extractive_writer, model_writer
from graph.tokens import TokenCounter, make_counter
from graph.tools import database_tools, table_names
from graph.trimming import Window, choose_window, model_input


def _attachment_locator(checkpointer: Any):
    def locate(config: RunnableConfig) -> Path | bytes | None:
        configurable = config.get("configurable", {})
        saver = checkpointer if checkpointer not in (None, True, False) else configurable.get(CONFIG_KEY_CHECKPOINTER)
        find = getattr(saver, "attachment_database", None) or getattr(saver, "attachment_path", None)
        thread_id = configurable.get("thread_id")
        if find is None or thread_id is None:
            return None
        return find(str(thread_id))

    return locate


def build_graph(
    checkpointer: Any = None,
    model: BaseChatModel | None = None,
    *,
    settings: Settings | None = None,
    counter: TokenCounter | None = None,
    summary_model: BaseChatModel | None = None,
):
    """Compile the chat graph.

    `checkpointer`: any LangGraph saver (None for `langgraph dev`, which brings
    its own). `model`: a chat model; by default ChatOpenAI from the environment,
    or the offline model when none is configured. `settings`: by default
    `Settings.from_env()`. `summary_model`: the model that writes the running
    summary; by default ChatOpenAI for `THREADKEEPER_SUMMARY_MODEL` (else the
    chat model's name) when a model is connected, else an extractive summary.
    The compiled graph's `summarizer` is the `graph.summary.Summarizer` in use.
    """
    settings = settings or Settings.from_env()
    model = model or make_model(settings)
    counter = counter or make_counter(settings.tokenizer, settings.model)
    summary_model = summary_model or make_summary_model(settings)
    summarizer = Summarizer(
        model_writer(summary_model) if summary_model is not None else extractive_writer(counter),
        counter,
        budget=settings.summary_budget,
        timeout_s=settings.timeout_s * (settings.max_retries + 1),
        chunk_tokens=settings.max_input_tokens - settings.summary_budget,
    )
    locate = _attachment_locator(checkpointer)
    tools = database_tools(locate, row_limit=settings.query_row_limit, timeout_s=settings.query_timeout_s)
    model_with_tools = model.bind_tools(tools)
    base_tokens = counter.count_text(settings.system_prompt) + 4
    if base_tokens >= settings.max_input_tokens // 2:
        raise ValueError(
            f"THREADKEEPER_SYSTEM_PROMPT is {base_tokens} tokens, too long for a "
            f"{settings.max_input_tokens}-token input budget"
        )

    def system_prompt(config: RunnableConfig) -> tuple[str, bool]:
        path = locate(config)
        if path is None or (not isinstance(path, bytes) and not Path(path).is_file()):
            return settings.system_prompt, False
        tables = ", ".join(table_names(path if isinstance(path, bytes) else Path(path))) or "none"
        return (
            f"{settings.system_prompt}\n\nA SQLite database is attached to this conversation "
            f"(tables: {tables}). Use the database tools to answer questions about its data; "
            f"it is read-only.",
            True,
        )

    def with_memory(prompt: str, state: dict) -> str:
        block = summarizer.block(state) if settings.summary else ""
        return f"{prompt}\n\n{block}" if block else prompt

    def trim(state: ChatState, config: RunnableConfig) -> dict:
        """Choose the newest turns that fit the budget beside the system prompt and the
        memory block; the history itself is untouched."""
        memory = summarizer.refresh(state, config) if settings.summary else {}
        prompt = with_memory(system_prompt(config)[0], {**state, **memory})
        previous = Window.from_state(state.get("window"))
        window = choose_window(state["messages"], counter, settings.max_input_tokens, summarizer.tokens(prompt) + 4, previous)
        return {"window": window.as_state(), **memory}

    def model_call(state: ChatState, config: RunnableConfig) -> tuple[Any, list, Window]:
        """What the model node sends, and to which binding: shared by its sync and async twins."""
        prompt, with_tools = system_prompt(config)
        window = Window.from_state(state.get("window")) or Window(start=0, tokens=0)
        sent = model_input(with_memory(prompt, state), state["messages"], window)
        return model_with_tools if with_tools else model, sent, window

    def model_update(state: ChatState, config: RunnableConfig, reply: AIMessage, window: Window) -> dict:
        if window.note:
            reply = reply.model_copy(update={"response_metadata": {**reply.response_metadata, "input_note": window.note}})
        if settings.summary and not reply.tool_calls:
            summarizer.after_reply(state, reply, window, config)  # starts a thread at most: never waits
        return {"messages": [reply]}

    def call_model(state: ChatState, config: RunnableConfig) -> dict:
        chosen, sent, window = model_call(state, config)
        return model_update(state, config, invoke_model(chosen, sent, config, settings), window)

    async def acall_model(state: ChatState, config: RunnableConfig) -> dict:
        # `graph.astream` awaits this one: cancelling the run (the web chat's Stop)
        # cancels the model's request instead of leaving it running on a thread.
        # Finding the attachment's tables reads files: not on the event loop.
        chosen, sent, window = await asyncio.to_thread(model_call, state, config)
        return model_update(state, config, await ainvoke_model(chosen, sent, config, settings), window)

    def route_model_output(state: ChatState) -> Literal["tools", "__end__"]:
        # No messages at all after an edit or a regenerate removed a thread's only turn.
        last = state["messages"][-1] if state["messages"] else None
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else END

    builder = StateGraph(ChatState)
    builder.add_node("trim", trim)
    builder.add_node("model", RunnableLambda(call_model, afunc=acall_model, name="model"))
    builder.add_node("tools", ToolNode(tools, handle_tool_errors=True))
    builder.add_edge(START, "trim")
    builder.add_edge("trim", "model")
    builder.add_conditional_edges("model", route_model_output)
    builder.add_edge("tools", "trim")
    compiled = builder.compile(checkpointer=checkpointer, name="threadkeeper")
    compiled.summarizer = summarizer
    return compiled


graph = build_graph()
"""The graph with no checkpointer, for `langgraph.json` (the server brings the saver)."""
