"""The Dockerfile and compose.yaml, checked against what the app really uses.

There is no Docker daemon here, so the image is never built. What is tested:
the files parse; their command, port, volume, environment variables and health
check are the ones the app reads and serves; and the image's own commands run
as written: the build stage's RUN lines in a fresh venv (a real `pip install .`
from the package index, nothing borrowed from this venv), then the final
stage's CMD with its ENV, until its HEALTHCHECK command passes, then its
STOPSIGNAL, after which the process must exit 0. Not run: the base image, the
`useradd` RUN line (it needs root), COPY --from between stages (the test
installs to the path the final stage uses), and VOLUME/USER themselves.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from checkpointers.url import sqlite_path
from tests.gradio_api import free_port

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / d for d in ("checkpointers", "graph", "ui")]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined, lines = "", []
    for raw in text.splitlines():
        line = raw.strip()
        if not joined and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            joined += line[:-1] + " "
            continue
        lines.append(joined + line)
        joined = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def stages(text: str) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction, args in instructions(text):
        if instruction == "FROM":
            found.append([])
        found[-1].append((instruction, args))
    return found


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in stage:
        if instruction == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def one(stage: list[tuple[str, str]], name: str) -> str:
    (value,) = [args for instruction, args in stage if instruction == name]
    return value


def read_by_the_app(variable: str) -> bool:
    return any(variable in p.read_text() for d in SOURCES for p in d.rglob("*.py"))


DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_the_dockerfile_is_multi_stage_slim_non_root_and_serves_what_the_app_serves():
    build, final = stages(DOCKERFILE)
    assert " AS build" in one(build, "FROM") and one(final, "FROM").endswith("-slim")
    assert one(final, "USER") not in ("root", "0")
    assert json.loads(one(final, "CMD")) == ["threadkeeper", "serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["threadkeeper"] == "ui.cli:main"
    env = env_of(final)
    # `serve` takes its address from these (ui/cli.py), the store from the URL.
    assert one(final, "EXPOSE") == env["THREADKEEPER_PORT"] == "7860"
    assert env["THREADKEEPER_HOST"] == "0.0.0.0"
    data = str(sqlite_path(env["THREADKEEPER_DATABASE_URL"]).parent)
    assert json.loads(one(final, "VOLUME")) == [data] and one(final, "WORKDIR") == data
    health = one(final, "HEALTHCHECK")
    assert "/healthz" in health and "THREADKEEPER_PORT" in health
    assert one(final, "STOPSIGNAL") == "SIGTERM"
    for name in env:
        if name.startswith(("THREADKEEPER_", "GRADIO_")):
            assert read_by_the_app(name) or name.startswith("GRADIO_"), name


def test_compose_runs_the_image_on_its_port_volume_and_health_check():
    (name, app), = COMPOSE["services"].items()
    final = stages(DOCKERFILE)[-1]
    env = env_of(final)
    assert app["build"] == "."
    assert app["ports"] == [f"{env['THREADKEEPER_PORT']}:{one(final, 'EXPOSE')}"]
    volume, _, mount = app["volumes"][0].partition(":")
    assert volume in COMPOSE["volumes"] and [mount] == json.loads(one(final, "VOLUME"))
    for key, value in app["environment"].items():
        assert read_by_the_app(key), key
        if key in env:
            assert str(value) == env[key], key
    assert "/healthz" in " ".join(app["healthcheck"]["test"]) and env["THREADKEEPER_PORT"] in " ".join(app["healthcheck"]["test"])
    assert app["stop_signal"] == "SIGTERM"
    grace = float(re.fullmatch(r"(\d+)s", app["stop_grace_period"]).group(1))
    from ui.app import GRACE_S

    assert grace > GRACE_S  # the app's own grace for streams ends before the orchestrator kills it


def test_the_images_commands_run_as_written_in_a_fresh_venv(tmp_path: Path):
    """Slow (a real `pip install .` from the package index, about two minutes here)."""
    build, final = stages(DOCKERFILE)
    python = shutil.which("python3.11") or sys.executable
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(python)  # the image's `python`: a plain CPython 3.11, not this venv
    prefix = str(tmp_path / "opt")
    src = tmp_path / "src"
    src.mkdir()
    for instruction, args in build:
        if instruction == "COPY":
            *sources, _ = args.split()
            for s in sources:
                (shutil.copytree if (ROOT / s).is_dir() else shutil.copy)(ROOT / s, src / s)
    clean = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONFIG_FILE", "PIP_TRUSTED_HOST"):
        if key in os.environ:
            clean[key] = os.environ[key]
    for instruction, args in build:
        if instruction == "RUN":  # as written, with the venv's path moved under tmp_path
            subprocess.run(["sh", "-c", args.replace("/opt/threadkeeper", prefix)], cwd=src, env=clean, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900)
    installed = next(Path(prefix).glob("lib/python3*/site-packages"))
    packages = {str(p.parent.relative_to(ROOT)) for d in SOURCES for p in d.rglob("__init__.py")}
    assert {p for p in packages if not (installed / p / "__init__.py").exists()} == set(), "packages left out of the install"
    env = {**clean, **{k: v.replace("/opt/threadkeeper", prefix) for k, v in env_of(final).items()}}
    env["PATH"] = env["PATH"].replace("$PATH", clean["PATH"])
    data = tmp_path / "data"
    data.mkdir()
    env["THREADKEEPER_DATABASE_URL"] = env["THREADKEEPER_DATABASE_URL"].replace("/data/", f"{data}/")
    env["THREADKEEPER_PORT"] = str(free_port())  # 7860 may be taken on this machine
    log = open(tmp_path / "container.log", "w")
    proc = subprocess.Popen(json.loads(one(final, "CMD")), cwd=data, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        health = json.loads(one(final, "HEALTHCHECK").split(" CMD ", 1)[1])
        for _ in range(240):
            if subprocess.run(health, env=env, capture_output=True).returncode == 0:
                break
            assert proc.poll() is None, (tmp_path / "container.log").read_text()[-2000:]
            time.sleep(0.5)
        else:
            pytest.fail("the health check never passed")
        proc.send_signal(getattr(signal, one(final, "STOPSIGNAL")))
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = (tmp_path / "container.log").read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(line["message"].startswith("started:") for line in lines)  # THREADKEEPER_LOG_FORMAT=json
    assert (data / "threadkeeper.db").exists()
    assert "include-system-site-packages = false" in (Path(prefix) / "pyvenv.cfg").read_text()
