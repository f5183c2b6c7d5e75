"""The operator commands scripts depend on: exact arguments, one-line errors, exit 1, nothing written."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from tenants.models import ApiKey, Membership, PageTemplate, Tenant

ROOT = Path(__file__).resolve().parents[2]


def run_manage(*args: str, db_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{db_path}", "DEBUG": "1"}
    env.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def cli_db(tmp_path_factory) -> Path:
    db_path = tmp_path_factory.mktemp("cli") / "cli.sqlite3"
    result = run_manage("migrate", "-v0", db_path=db_path)
    assert result.returncode == 0, result.stderr
    return db_path


@pytest.fixture(scope="module")
def cli_db_with_tenant(cli_db) -> Path:
    result = run_manage("create_tenant", "--slug", "dup", "--name", "Dup", db_path=cli_db)
    assert result.returncode == 0, result.stderr
    return cli_db


def table_contents(db_path: Path) -> dict[str, list]:
    """Every row of every table: 'nothing written' means this does not change."""
    with closing(sqlite3.connect(db_path)) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {table: sorted(map(repr, conn.execute(f'SELECT * FROM "{table}"'))) for table in tables}  # noqa: S608


def test_create_tenant_seeds_default_template(db):
    call_command("create_tenant", "--slug", "acme", "--name", "Acme Ltd", "--currency", "eur")
    tenant = Tenant.objects.get(slug="acme")
    assert tenant.currency == "EUR"
    template = PageTemplate.objects.get(tenant=tenant, slug="default")
    assert list(template.fields.values_list("key", flat=True)) == [
        "amount",
        "first_name",
        "last_name",
        "email",
        "address",
        "postcode",
    ]
    assert template.fields.get(key="amount").required


@pytest.mark.real_password_hashing
def test_create_user_and_api_key(db):
    call_command("create_tenant", "--slug", "acme", "--name", "Acme")
    call_command(
        "create_user", "--tenant", "acme", "--username", "ann", "--role", "agent", "--password", "a-long-enough-pw-1"
    )
    user = get_user_model().objects.get(username="ann")
    assert user.membership.role == "agent" and user.check_password("a-long-enough-pw-1")
    assert user.password.startswith("argon2")
    assert not user.is_staff


def create_user_args(
    username: str = "u", *extra: str, tenant: str = "dup", role: str = "agent", password: str = "pw-long-enough-1"
) -> list[str]:
    return ["create_user", "--tenant", tenant, "--username", username, "--role", role, "--password", password, *extra]


@pytest.mark.parametrize(
    "args, message",
    [
        (["create_tenant", "--slug", "dup", "--name", "Again"], "already exists"),
        (["create_tenant", "--slug", "bad slug!", "--name", "X"], "invalid slug"),
        (["create_tenant", "--slug", "cur", "--name", "X", "--currency", "EURO"], "invalid currency"),
        (["create_tenant", "--name", "X"], "--slug"),
        (["create_tenant", "--slug", "long", "--name", "N" * 201], "name:"),
        (create_user_args(tenant="nope"), "unknown tenant"),
        (create_user_args(role="boss"), "unknown role"),
        (create_user_args(password="123"), "password rejected"),
        (create_user_args("bad name!"), "username:"),
        (create_user_args("u" * 151), "username:"),
        (create_user_args("mail", "--email", "not-an-email"), "email:"),
        (["create_api_key", "--tenant", "nope"], "unknown tenant"),
        (["create_api_key", "--tenant", "dup", "--name", "k" * 101], "name:"),
    ],
)
def test_bad_arguments_one_line_error_exit_1_nothing_written(cli_db_with_tenant, args, message):
    before = table_contents(cli_db_with_tenant)
    result = run_manage(*args, db_path=cli_db_with_tenant)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert table_contents(cli_db_with_tenant) == before


def test_create_api_key_prints_key_alone_on_last_line(cli_db):
    run_manage("create_tenant", "--slug", "keys", "--name", "Keys", db_path=cli_db)
    result = run_manage("create_api_key", "--tenant", "keys", "--name", "crm", db_path=cli_db)
    rows = table_contents(cli_db)["tenants_apikey"]
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("sp_") and " " not in key
    # Only the key's hash is stored, never the key.
    assert key not in repr(rows) and ApiKey.hash_secret(key) in repr(rows)


def test_membership_is_one_tenant_per_user(alpha, beta):
    assert Membership.objects.for_tenant(alpha.tenant).count() == 3
    assert set(Membership.objects.for_tenant(beta.tenant).values_list("user__username", flat=True)) == {
        "beta-admin",
        "beta-agent",
        "beta-supervisor",
    }
