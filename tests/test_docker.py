"""The Dockerfile and compose.yaml, checked against what the app really uses.

There is no Docker daemon here, so neither the image nor the compose project is
ever run. What is tested: the files parse; the image's command, port, volume,
environment variables and health check are the ones the app reads and serves;
compose's PostgreSQL service, its two app replicas, their ports, health checks,
start order, database URL and shared secrets fit together; and the image's own
commands run as written: the build stage's RUN lines in a fresh venv (a real
`pip install '.[postgres]'` from the package index, nothing borrowed from this
venv), then the final stage's CMD twice, each until its HEALTHCHECK command
passes and then its STOPSIGNAL, after which the process must exit 0: with the
image's ENV (SQLite), and with the compose app's environment on the test
PostgreSQL server (the URL's host `db` replaced, as only compose's network
knows it). Not run: the base images, the `useradd` RUN line (it needs root),
COPY --from between stages (the test installs to the path the final stage
uses), VOLUME/USER themselves, the postgres:16 image, and compose's own
replicas, port range and start order.
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
from urllib.parse import urlsplit

import httpx
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


COMPOSE_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(:[-?])?([^}]*)\}|\$(\w+)")
LIBPQ_VARIABLES = {"PGPASSWORD"}
"""Read by libpq under psycopg, not by the app's own code."""
CHOSEN = {"POSTGRES_PASSWORD": "0123456789abcdef", "THREADKEEPER_WEB_SECRET": "f" * 64}
"""What an operator exports before `docker compose up` (compose.yaml's first lines)."""


def interpolate(value: str, environ: dict[str, str]) -> str:
    """`value` as compose fills it in from `environ`: `${NAME:-default}`, `${NAME:?message}`
    (an error when unset or empty), `$$` (a `$` left for the container's shell)."""

    def fill(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, form, rest = match.group(1), match.group(2), match.group(3)
        assert name and form and (rest or form == ":-"), f"{match.group(0)}: use ${{NAME:-default}} or ${{NAME:?why}}"
        if environ.get(name):
            return environ[name]
        if form == ":?":
            raise LookupError(f"{name}: {rest}")
        return rest

    return COMPOSE_VARIABLE.sub(fill, str(value))


def service_env(service: dict, environ: dict[str, str]) -> dict[str, str]:
    return {key: interpolate(value, environ) for key, value in service["environment"].items()}


def test_compose_runs_two_app_replicas_on_a_healthy_postgresql_service():
    services = COMPOSE["services"]
    assert set(services) == {"db", "app"}
    db, app = services["db"], services["app"]
    final = stages(DOCKERFILE)[-1]
    image_env = env_of(final)

    # The database: postgres:16, its data in a named volume, healthy once pg_isready says so.
    assert db["image"] == "postgres:16"
    volume, _, mount = db["volumes"][0].partition(":")
    assert volume in COMPOSE["volumes"] and mount == "/var/lib/postgresql/data"
    check = interpolate(" ".join(db["healthcheck"]["test"]), CHOSEN)
    assert db["healthcheck"]["test"][0] == "CMD-SHELL" and "pg_isready" in check
    assert "${POSTGRES_USER}" in check and "${POSTGRES_DB}" in check  # the container's own, expanded by its shell
    db_env = service_env(db, CHOSEN)
    assert set(db_env) == {"POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD"}
    with pytest.raises(LookupError, match="POSTGRES_PASSWORD"):
        service_env(db, {})  # no password, no database: compose refuses to start

    # The app: two replicas of the image, after the database is healthy, on it.
    assert app["build"] == "." and app["deploy"]["replicas"] == 2
    assert app["depends_on"] == {"db": {"condition": "service_healthy"}}
    (ports,) = app["ports"]
    hosts, _, inside = ports.partition(":")
    first, _, last = hosts.partition("-")
    assert int(last) - int(first) + 1 == app["deploy"]["replicas"]  # a host port each
    assert inside == one(final, "EXPOSE") == image_env["THREADKEEPER_PORT"]
    assert "volumes" not in app  # nothing of the app's own on disk: the store is PostgreSQL
    env = service_env(app, CHOSEN)
    for key in env:
        assert read_by_the_app(key) or key in LIBPQ_VARIABLES, key
        if key in image_env and key != "THREADKEEPER_DATABASE_URL":
            assert env[key] == image_env[key], key
    url = urlsplit(env["THREADKEEPER_DATABASE_URL"])
    assert url.scheme == "postgresql" and url.hostname == "db" and url.hostname in services and url.port == 5432
    assert url.username == db_env["POSTGRES_USER"] and url.path == "/" + db_env["POSTGRES_DB"] and url.password is None
    assert env["PGPASSWORD"] == db_env["POSTGRES_PASSWORD"]
    with pytest.raises(LookupError, match="THREADKEEPER_WEB_SECRET"):
        service_env(app, {"POSTGRES_PASSWORD": CHOSEN["POSTGRES_PASSWORD"]})  # replicas never make secrets of their own
    assert "THREADKEEPER_ADMIN_TOKEN" in env

    health = " ".join(app["healthcheck"]["test"])
    assert "/healthz" in health and image_env["THREADKEEPER_PORT"] in health
    assert app["stop_signal"] == "SIGTERM"
    grace = float(re.fullmatch(r"(\d+)s", app["stop_grace_period"]).group(1))
    from ui.app import GRACE_S

    assert grace > GRACE_S  # the app's own grace for streams ends before the orchestrator kills it


def run_until_healthy_then_stop(final: list[tuple[str, str]], env: dict[str, str], cwd: Path, log_path: Path) -> str:
    """The final stage's CMD with `env`, until its HEALTHCHECK passes (and /readyz says the
    store answers), then its STOPSIGNAL; it must exit 0. Returns its log."""
    env = {**env, "THREADKEEPER_PORT": str(free_port())}  # 7860 may be taken on this machine
    with open(log_path, "w") as log:
        proc = subprocess.Popen(json.loads(one(final, "CMD")), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        health = json.loads(one(final, "HEALTHCHECK").split(" CMD ", 1)[1])
        for _ in range(240):
            if subprocess.run(health, env=env, capture_output=True).returncode == 0:
                break
            assert proc.poll() is None, log_path.read_text()[-2000:]
            time.sleep(0.5)
        else:
            pytest.fail("the health check never passed")
        ready = httpx.get(f"http://127.0.0.1:{env['THREADKEEPER_PORT']}/readyz", timeout=30)
        assert ready.status_code == 200 and ready.json()["store"] == "ok", ready.text
        proc.send_signal(getattr(signal, one(final, "STOPSIGNAL")))
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    return log_path.read_text()


def test_the_images_commands_run_as_written_in_a_fresh_venv(tmp_path: Path, postgres_url: str):
    """Slow (a real `pip install '.[postgres]'` from the package index, about two minutes here)."""
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
    text = run_until_healthy_then_stop(final, env, data, tmp_path / "container.log")
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(line["message"].startswith("started:") for line in lines)  # THREADKEEPER_LOG_FORMAT=json
    assert (data / "threadkeeper.db").exists()
    assert "include-system-site-packages = false" in (Path(prefix) / "pyvenv.cfg").read_text()

    # As a compose replica: the app service's environment, on PostgreSQL.
    replica = {**env, **service_env(COMPOSE["services"]["app"], CHOSEN)}
    assert urlsplit(replica["THREADKEEPER_DATABASE_URL"]).hostname == "db"
    replica["THREADKEEPER_DATABASE_URL"] = postgres_url  # `db` resolves on compose's network only
    elsewhere = tmp_path / "replica"
    elsewhere.mkdir()
    text = run_until_healthy_then_stop(final, replica, elsewhere, tmp_path / "replica.log")
    assert "(database postgresql://postgres@127.0.0.1:5432/" in text
    assert list(elsewhere.iterdir()) == []  # nothing on the replica's disk: the secret came from the environment
