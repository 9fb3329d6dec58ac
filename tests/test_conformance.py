"""LangGraph's own conformance suite, every capability, on both engines: a real SQLite
file, and a real PostgreSQL schema (a new one for each saver the suite asks for)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES

from checkpointers import open_async_saver
from tests.postgres import fresh_schema


@checkpointer_test(name="threadkeeper ThreadSaver on SQLite")
async def sqlite_saver():
    with tempfile.TemporaryDirectory() as tmp:
        async with open_async_saver(f"sqlite:///{Path(tmp) / 'conformance.db'}") as saver:
            yield saver


def postgres_saver(database_url: str, name: str = "threadkeeper PostgresThreadSaver", **options):
    """A conformance-suite factory: each saver on a fresh schema of `database_url`, opened with `options`."""

    @checkpointer_test(name=name)
    async def saver():
        with fresh_schema(database_url) as url:
            async with open_async_saver(url, **options) as opened:
                yield opened

    return saver


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_every_conformance_capability_is_detected_and_passes(engine: str, request):
    factory = sqlite_saver if engine == "sqlite" else postgres_saver(request.getfixturevalue("postgres_database"))
    report = await validate(factory)
    summary = {name: (r.detected, r.passed, r.failures) for name, r in report.results.items()}
    assert set(report.results) == {c.value for c in ALL_CAPABILITIES}
    for name, (detected, passed, failures) in summary.items():
        assert detected, f"{name} not detected"
        assert passed, f"{name} failed: {failures}"
