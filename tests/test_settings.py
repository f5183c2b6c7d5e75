"""Settings: the production profile passes `check --deploy`, and refuses to start unsafe."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def manage(args: list[str], **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "REDIS_URL", "DATABASE_URL"}}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def production_env(tmp_path: Path) -> dict[str, str]:
    return {
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "pay.example.com",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'prod.sqlite3'}",
        "REDIS_URL": "redis://127.0.0.1:6379/9",
    }


def test_production_profile_passes_check_deploy_with_no_warnings(tmp_path):
    result = manage(["check", "--deploy", "--fail-level", "WARNING"], **production_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_secret_key(tmp_path):
    env = production_env(tmp_path)
    del env["SECRET_KEY"]
    result = manage(["check"], **env)
    assert result.returncode != 0 and "SECRET_KEY must be set" in result.stderr


def test_demo_profile_needs_no_variables():
    result = manage(["check"])
    assert result.returncode == 0, result.stderr


def test_keypad_simulator_is_never_routed_in_production(tmp_path):
    script = (
        "from django.urls import resolve, Resolver404\n"
        "try:\n    resolve('/simulator/')\n    print('routed')\n"
        "except Resolver404:\n    print('absent')"
    )
    env = {**production_env(tmp_path), "KEYPAD_SIMULATOR_ENABLED": "1"}
    result = manage(["shell", "--no-imports", "-c", script], **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "absent"
    demo = manage(["shell", "--no-imports", "-c", script])
    assert demo.stdout.strip().splitlines()[-1] == "routed"  # the same check sees it where it is routed


def test_media_worker_limits_out_of_range_refuse_to_start():
    wrong = (("MEDIA_WORKER_MAX_LOAD", "0"), ("MEDIA_WORKER_MAX_LOAD", "70"), ("MEDIA_WORKER_MAX_CALLS", "-1"))
    for name, value in wrong:
        result = manage(["check"], **{name: value})
        assert result.returncode != 0 and f"{name} is" in result.stderr, (name, value, result.stderr[-300:])
    assert manage(["check"], MEDIA_WORKER_MAX_LOAD="1", MEDIA_WORKER_MAX_CALLS="300").returncode == 0
