"""Admin login lockouts (django-axes): one username from one address, for the cool-off, visible and clearable."""

from __future__ import annotations

import pytest
from axes.models import AccessAttempt, AccessFailureLog
from django.conf import settings
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"
WRONG = "tr0ub4dor&3"
ADDRESS = "198.51.100.7"
OTHER_ADDRESS = "198.51.100.8"
LOGIN = reverse("admin:login")


@pytest.fixture
def operator(django_user_model):
    return django_user_model.objects.create_superuser("operator", "operator@example.com", PASSWORD)


def log_in(client, username: str, password: str, address: str = ADDRESS):
    return client.post(LOGIN, {"username": username, "password": password, "next": "/admin/"}, REMOTE_ADDR=address)


def fail(client, times: int, username: str = "operator", address: str = ADDRESS) -> list[int]:
    return [log_in(client, username, WRONG, address).status_code for _ in range(times)]


def logged_in(response) -> bool:
    return response.status_code == 302 and response["Location"] == "/admin/"


def test_the_failure_limit_locks_that_username_out_from_that_address(client, operator):
    limit = settings.AXES_FAILURE_LIMIT
    assert fail(client, limit - 1) == [200] * (limit - 1)  # the form again, with its error

    locked = log_in(client, "operator", WRONG)
    assert locked.status_code == 429
    page = locked.content.decode()
    assert "Too many failed logins" in page
    assert f"After {limit} failed logins, logins as <strong>operator</strong> from this address are locked" in page
    assert "0:15:00" in page

    refused = log_in(client, "operator", PASSWORD)  # the right password no longer helps from here
    assert refused.status_code == 429
    assert "_auth_user_id" not in client.session


def test_the_same_username_from_another_address_still_logs_in(client, operator):
    fail(client, settings.AXES_FAILURE_LIMIT)
    assert logged_in(log_in(client, "operator", PASSWORD, OTHER_ADDRESS))


def test_another_username_from_the_locked_address_still_logs_in(client, operator, django_user_model):
    django_user_model.objects.create_superuser("colleague", "colleague@example.com", PASSWORD)
    fail(client, settings.AXES_FAILURE_LIMIT)
    assert logged_in(log_in(client, "colleague", PASSWORD))


def test_a_login_before_the_limit_forgives_the_earlier_failures(client, operator):
    limit = settings.AXES_FAILURE_LIMIT
    fail(client, limit - 1)
    assert logged_in(log_in(client, "operator", PASSWORD))
    client.logout()
    assert fail(client, limit - 1) == [200] * (limit - 1)


def test_the_lockout_ends_after_the_cool_off(client, operator):
    fail(client, settings.AXES_FAILURE_LIMIT)
    assert log_in(client, "operator", PASSWORD).status_code == 429
    AccessAttempt.objects.update(attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME)
    assert logged_in(log_in(client, "operator", PASSWORD))


def test_the_attempt_keeps_no_password(client, operator):
    fail(client, 2)
    (attempt,) = AccessAttempt.objects.all()
    assert (attempt.username, attempt.ip_address, attempt.failures_since_start) == ("operator", ADDRESS, 2)
    assert WRONG not in attempt.post_data
    assert AccessFailureLog.objects.filter(username="operator", ip_address=ADDRESS).count() == 2


def test_an_operator_sees_the_lockout_in_the_admin_and_deleting_it_lifts_it(client, operator, django_user_model):
    fail(client, settings.AXES_FAILURE_LIMIT)
    (attempt,) = AccessAttempt.objects.all()
    colleague = django_user_model.objects.create_superuser("colleague", "colleague@example.com", PASSWORD)
    admin = client.__class__()
    admin.force_login(colleague)

    attempts = admin.get(reverse("admin:axes_accessattempt_changelist")).content.decode()
    assert ADDRESS in attempts and "operator" in attempts and "Locked Out" in attempts
    failures = admin.get(reverse("admin:axes_accessfailurelog_changelist")).content.decode()
    assert ADDRESS in failures

    deleted = admin.post(reverse("admin:axes_accessattempt_delete", args=[attempt.pk]), {"post": "yes"})
    assert deleted.status_code == 302
    assert not AccessAttempt.objects.exists()
    assert AccessFailureLog.objects.filter(username="operator").count() == settings.AXES_FAILURE_LIMIT  # the record
    assert logged_in(log_in(client, "operator", PASSWORD))


def test_axes_reset_username_lifts_the_lockout(client, operator, capsys):
    fail(client, settings.AXES_FAILURE_LIMIT)
    call_command("axes_reset_username", "operator")
    assert "1 attempts removed." in capsys.readouterr().out
    assert logged_in(log_in(client, "operator", PASSWORD))
