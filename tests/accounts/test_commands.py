import io
import os
import subprocess
import sys

import pytest
from django.core.management import CommandError, call_command

from accounts import keys
from accounts.keys import Denial, DenialReason, Entitlement
from accounts.models import ApiKey, ProductTier, User
from tests.accounts.factories import make_key, make_user

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_create_api_key_prints_the_raw_key_alone():
    make_user("gina", plans={"stocks": "expert"})
    output = run("create_api_key", "gina", "--product", "stocks", "--label", "bot")
    raw = output.strip()
    assert output == raw + "\n"
    entitlement = keys.resolve_key(raw)
    assert isinstance(entitlement, Entitlement) and entitlement.product == "stocks"
    assert ApiKey.objects.get().label == "bot"


def test_create_api_key_can_create_the_user():
    raw = run("create_api_key", "henry", "--product", "options", "--create-user").strip()
    assert User.objects.filter(username="henry").exists()
    assert keys.resolve_key(raw).plan == "free"


def test_create_api_key_unknown_user_changes_nothing():
    with pytest.raises(CommandError, match="No user named 'nobody'"):
        run("create_api_key", "nobody", "--product", "options")
    assert not ApiKey.objects.exists() and not User.objects.exists()


def test_create_api_key_unknown_product():
    make_user("ivy")
    with pytest.raises(CommandError, match="invalid choice: 'crypto'"):
        run("create_api_key", "ivy", "--product", "crypto")
    assert not ApiKey.objects.exists()


def test_set_plan_creates_and_changes_the_tier():
    user = make_user("jack")
    _, raw = make_key(user, "options")
    assert "options plan is now Expert" in run("set_plan", "jack", "--product", "options", "--plan", "expert")
    assert keys.resolve_key(raw).plan == "expert"
    run("set_plan", "jack", "--product", "options", "--plan", "developer")
    assert keys.resolve_key(raw).plan == "developer"
    assert ProductTier.objects.filter(user=user).count() == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nobody", "--product", "options", "--plan", "expert"], "No user named 'nobody'"),
        (["kate", "--product", "options", "--plan", "platinum"], "No plan 'platinum'"),
        (["kate", "--product", "futures", "--plan", "expert"], "invalid choice: 'futures'"),
    ],
)
def test_set_plan_errors_change_nothing(args, message):
    make_user("kate")
    with pytest.raises(CommandError, match=message):
        run("set_plan", *args)
    assert not ProductTier.objects.exists()


def test_revoke_api_key():
    user = make_user("liam", plans={"options": "expert"})
    api_key, raw = make_key(user)
    assert isinstance(keys.resolve_key(raw), Entitlement)
    assert run("revoke_api_key", api_key.prefix).strip() == f"Revoked {api_key.prefix}."
    assert keys.resolve_key(raw) == Denial(DenialReason.REVOKED)
    assert "already revoked" in run("revoke_api_key", api_key.prefix)


def test_revoke_unknown_prefix():
    with pytest.raises(CommandError, match="No API key with prefix 'cmo_nope'"):
        run("revoke_api_key", "cmo_nope")


def test_commands_exit_non_zero_from_the_shell(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], env=env, check=True)
    result = subprocess.run(
        [sys.executable, "manage.py", "set_plan", "nobody", "--product", "options", "--plan", "expert"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 1
    assert "No user named 'nobody'" in result.stderr
