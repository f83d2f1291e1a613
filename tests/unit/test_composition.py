"""The composition root reads settings when it builds a process, never when a module is imported;
arq's entry (`arq jobs.worker.WorkerSettings`) reads them when arq asks for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from settings import get_settings

IMPORT_EVERY_MODULE = """
import importlib, pkgutil
for package in ("bot", "fallback", "generation", "jobs", "providers"):
    for module in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        importlib.import_module(module.name)
import app, cli, jobs.worker, logs, migrations.runner, settings
"""


def test_no_module_reads_settings_when_imported(tmp_path: Path) -> None:
    # Configuration that cannot load: importing must not notice, only building a process may.
    env = {**os.environ, "DATABASE_URL": "not a database", "BOT_TOKENS": "not json"}
    result = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", IMPORT_EVERY_MODULE],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_arq_gets_the_worker_options_from_settings_when_it_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    import jobs.worker

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6390/5")
    monkeypatch.setenv("JOB_TIMEOUT", "77")
    monkeypatch.setenv("WORKER_MAX_JOBS", "7")
    get_settings.cache_clear()
    try:
        options = jobs.worker.WorkerSettings
    finally:
        get_settings.cache_clear()
    redis = options["redis_settings"]
    assert (redis.port, redis.database) == (6390, 5)
    assert (options["job_timeout"], options["max_jobs"]) == (77, 7)
    [job] = options["functions"]
    assert (job.name, job.timeout_s) == ("run_generation", 77)
    assert callable(options["on_startup"]) and callable(options["on_shutdown"])
    with pytest.raises(AttributeError):
        _ = jobs.worker.NoSuchName
