"""threadkeeper's agent: a chat graph that trims what the model sees, never what it keeps.

`build_graph(checkpointer=saver)` compiles it on any LangGraph saver;
`graph.graph` is the same graph without one, for `langgraph dev`.
"""

from graph.agent import build_graph, graph
from graph.model import ModelError
from graph.settings import Settings

__all__ = ["ModelError", "Settings", "build_graph", "graph"]
