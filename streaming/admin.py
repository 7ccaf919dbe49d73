"""What operators see of the live stream in the Django admin: the "Live connections" page, a live marker and the
product tiers in the user list, and "Disconnect live connections" on users and keys.

The live part comes from the connections' records in Redis (``streaming.gateway.live_connections``), read once per
page; the users' and keys' admins of ``accounts`` are extended here, so that ``accounts`` knows nothing of streaming.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path

from accounts import admin as accounts_admin
from accounts.models import ApiKey, User
from streaming.conf import MARKETS
from streaming.gateway.live_connections import LiveConnection, live_connections, read_live_connections
from streaming.gateway.rechecks import request_disconnect

REFRESH_SECONDS = 5
SORTABLE = ("user", "market", "client", "gateway", "connected_at", "subscriptions", "events", "bytes_sent",
            "outbox_bytes")


def disconnect(modeladmin: admin.ModelAdmin, request: HttpRequest, user_ids: set[int]) -> None:
    live = {record.user_id for record in read_live_connections(live_connections)} & user_ids
    try:
        request_disconnect(sorted(live))
    except Exception as error:  # the operator must hear that nothing was sent
        modeladmin.message_user(request, f"Gateways could not be reached: {error}", messages.ERROR)
        return
    modeladmin.message_user(request, f"Disconnecting {len(live)} live connection(s).", messages.SUCCESS)


@admin.action(description="Disconnect live connections")
def disconnect_users(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[User]) -> None:
    disconnect(modeladmin, request, set(queryset.values_list("pk", flat=True)))


@admin.action(description="Disconnect live connections")
def disconnect_key_users(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
    disconnect(modeladmin, request, set(queryset.values_list("user_id", flat=True)))


admin.site.unregister(User)


@admin.register(User)
class UserAdmin(accounts_admin.UserAdmin):
    list_display = ("username", "email", "live", "tiers", "is_active", "is_staff", "date_joined")
    actions = [disconnect_users]
    change_list_template = "admin/streaming/user_change_list.html"
    _live: frozenset[int] = frozenset()

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        # Read once per page for the "live" column; a concurrent page may replace it with its own, as fresh, read.
        self._live = frozenset(record.user_id for record in read_live_connections(live_connections))
        return super().changelist_view(request, extra_context)

    def get_queryset(self, request: HttpRequest) -> QuerySet[User]:
        return super().get_queryset(request).prefetch_related("tiers__plan")

    @admin.display(boolean=True, description="live")
    def live(self, user: User) -> bool:
        return user.pk in self._live

    @admin.display(description="tiers")
    def tiers(self, user: User) -> str:
        tiers = sorted(user.tiers.all(), key=lambda tier: tier.product)
        return ", ".join(f"{tier.product}: {tier.plan.name}" for tier in tiers) or "free"

    def get_urls(self):
        return [
            path("live-connections/", self.admin_site.admin_view(self.live_connections_view),
                 name="live_connections"),
            *super().get_urls(),
        ]

    def live_connections_view(self, request: HttpRequest) -> HttpResponse:
        """Every live connection of every gateway process: filter by market and user, sort by any column."""
        records = read_live_connections(live_connections)
        names = dict(User.objects.filter(pk__in={r.user_id for r in records}).values_list("pk", "username"))
        rows = [(names.get(record.user_id, f"#{record.user_id}"), record) for record in records]
        market, user = request.GET.get("market", ""), request.GET.get("user", "").strip()
        if market:
            rows = [(name, record) for name, record in rows if record.market == market]
        if user:
            rows = [(name, record) for name, record in rows if user.lower() in name.lower()]
        order = request.GET.get("o", "user")
        column = order.lstrip("-") if order.lstrip("-") in SORTABLE else "user"
        rows.sort(key=lambda row: sort_key(row, column), reverse=order.startswith("-"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Live connections",
            "rows": rows,
            "markets": MARKETS,
            "market": market,
            "user_filter": user,
            "order": order,
            "columns": SORTABLE,
            "refresh_seconds": REFRESH_SECONDS,
        }
        return TemplateResponse(request, "admin/streaming/live_connections.html", context)


def sort_key(row: tuple[str, LiveConnection], column: str) -> str | int:
    name, record = row
    return name if column == "user" else getattr(record, column)


admin.site.unregister(ApiKey)


@admin.register(ApiKey)
class ApiKeyAdmin(accounts_admin.ApiKeyAdmin):
    actions = [accounts_admin.revoke_keys, disconnect_key_users]
