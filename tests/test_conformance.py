"""LangGraph's own conformance suite, every capability, against a real SQLite file."""

from __future__ import annotations

import tempfile
from pathlib import Path

from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES

from checkpointers import open_async_saver


@checkpointer_test(name="threadkeeper ThreadSaver")
async def threadkeeper_saver():
    with tempfile.TemporaryDirectory() as tmp:
        async with open_async_saver(f"sqlite:///{Path(tmp) / 'conformance.db'}") as saver:
            yield saver


async def test_every_conformance_capability_is_detected_and_passes():
    report = await validate(threadkeeper_saver)
    summary = {name: (r.detected, r.passed, r.failures) for name, r in report.results.items()}
    assert set(report.results) == {c.value for c in ALL_CAPABILITIES}
    for name, (detected, passed, failures) in summary.items():
        assert detected, f"{name} not detected"
        assert passed, f"{name} failed: {failures}"
