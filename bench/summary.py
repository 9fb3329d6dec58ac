"""Summary benchmark: what the running summary costs and sends, over 1,000 turns.

    make bench                        # runs this after the agent benchmark
    python -m bench.summary --turns 300

Three threads go through the product's agent graph side by side, turn by turn
(so a slow stretch of the machine falls on all three): the summary off, on
with a summary model, and on with the offline extractive summary. Both models
answer at once, so what is measured is threadkeeper's own work and storage.
Each thread has its own ThreadSaver file.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

from bench.agent import InstantModel
from bench.storage import Report, file_bytes, sentence
from checkpointers import ThreadSaver
from graph import Settings, build_graph
from graph.tokens import make_counter

COUNTER = make_counter("approximate")


class CountingModel(InstantModel):
    """The agent benchmark's instant model, noting the tokens of every input."""

    _sent: list[int] = PrivateAttr(default_factory=list)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        self._sent.append(sum(COUNTER.count(m) for m in messages))
        return super()._generate(messages, stop, run_manager, **kwargs)


class InstantSummaryModel(BaseChatModel):
    """Answers a summary call at once with about 400 tokens of what it was given."""

    _sent: list[int] = PrivateAttr(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "instant-summary"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        self._sent.append(sum(COUNTER.count(m) for m in messages))
        text = str(messages[-1].content).replace("Previous summary:\n", "").replace("New messages:\n", "")
        return ChatResult(generations=[ChatGeneration(message=AIMessage(text[-1600:]))])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=1000, help="turns in each thread (default 1000)")
    args = parser.parse_args(argv)
    settings = Settings()
    report = Report()
    print(f"\n== the running summary, one thread, {args.turns} turns, budget {settings.max_input_tokens} tokens ==", flush=True)
    with tempfile.TemporaryDirectory(prefix="tk-bench-summary-") as tmp:
        runs: dict[str, dict] = {}
        for name, summary, summary_model in (
            ("off", False, None),
            ("on", True, InstantSummaryModel()),
            ("extractive", True, None),
        ):
            saver = ThreadSaver(Path(tmp) / f"{name}.db")
            model = CountingModel()
            app = build_graph(
                checkpointer=saver, model=model, summary_model=summary_model, counter=COUNTER,
                settings=Settings(summary=summary),
            )
            runs[name] = {"saver": saver, "model": model, "summary_model": summary_model, "app": app, "costs": []}
        rng = random.Random(1)
        config = {"configurable": {"thread_id": "bench", "user_id": "bench"}}
        for _ in range(args.turns):
            message = sentence(rng, 100)
            for run in runs.values():
                started = time.perf_counter()
                run["app"].invoke({"messages": [HumanMessage(message)]}, config)
                run["costs"].append(time.perf_counter() - started)
        for name, run in runs.items():
            run["app"].summarizer.wait_idle(30)
            run["calls"] = run["app"].summarizer.calls
            run["covered"] = run["app"].get_state(config).values.get("summary", {}).get("count", 0)
            run["saver"].close()
            run["bytes"] = file_bytes(Path(tmp) / f"{name}.db")
    on, extractive = runs["on"], runs["extractive"]
    last = args.turns
    for name, run in runs.items():
        sent = run["model"]._sent
        report.check(
            f"tokens sent to the model per turn, summary {name} (mean; turn {last}: {sent[-1]:,})",
            statistics.mean(sent), "reference", True,
        )
    summary_sent = on["summary_model"]._sent
    report.check(f"summary calls in {last} turns, summary model", float(on["calls"]), "reference", True)
    report.check(f"summary calls in {last} turns, extractive (offline)", float(extractive["calls"]), "reference", True)
    report.check(
        "  tokens sent to the summary model per turn (mean over the thread)", sum(summary_sent) / last, "reference", True
    )
    report.check(
        f"  messages covered by the summary after {last} turns (of {2 * last})", float(on["covered"]), "reference", True
    )
    per_turn = {name: run["bytes"] / last for name, run in runs.items()}
    report.check("bytes on disk per turn: summary on / off", per_turn["on"] / per_turn["off"], "<= 1.1", per_turn["on"] / per_turn["off"] <= 1.1)
    report.check(
        f"  (bytes per turn: off {per_turn['off']:,.0f}, on {per_turn['on']:,.0f}, extractive {per_turn['extractive']:,.0f})",
        per_turn["on"], "reference", True, " B",
    )
    median = {name: statistics.median(run["costs"]) for name, run in runs.items()}
    report.check("time per turn (median): summary on / off", median["on"] / median["off"], "<= 1.1", median["on"] / median["off"] <= 1.1)
    report.check(
        f"  (median turn: off {median['off'] * 1000:.2f} ms, on {median['on'] * 1000:.2f} ms, "
        f"extractive {median['extractive'] * 1000:.2f} ms)",
        median["on"] * 1000, "reference", True, " ms",
    )
    report.finish(what="summary checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
