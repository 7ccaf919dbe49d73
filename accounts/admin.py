"""Admin for users (with their tiers and keys), plans and API keys.

A key created here is shown in full once, in the message on the next page, and never again; neither the secret
nor its hash is ever an editable field.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from accounts.models import ApiKey, Plan, ProductTier, User


class ProductTierInline(admin.TabularInline):
    model = ProductTier
    extra = 0


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("prefix", "product", "label", "created_at", "last_used_at", "expires_at", "revoked_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    inlines = [ProductTierInline, ApiKeyInline]
    list_display: tuple[str, ...] = ("username", "email", "is_active", "is_staff", "date_joined")


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = (
        "name", "slug", "websocket_access", "price_monthly_eur", "price_yearly_eur", "max_subscriptions"
    )
    prepopulated_fields = {"slug": ("name",)}


@admin.action(description="Revoke selected keys")
def revoke_keys(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
    revoked = 0
    for api_key in queryset.filter(revoked_at__isnull=True):
        api_key.revoke()
        revoked += 1
    modeladmin.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "product", "label", "created_at", "last_used_at", "expires_at", "revoked")
    list_filter = ("product", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("prefix", "label", "user__username", "user__email")
    actions = [revoke_keys]
    autocomplete_fields = ("user",)

    @admin.display(boolean=True)
    def revoked(self, obj: ApiKey) -> bool:
        return obj.is_revoked

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None):
        if obj is None:
            return ("user", "product", "label", "expires_at")
        return ("prefix", "user", "product", "label", "created_at", "last_used_at", "expires_at", "revoked_at")

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None):
        if obj is None:
            return ()
        return ("prefix", "user", "product", "created_at", "last_used_at", "revoked_at")

    def save_model(self, request: HttpRequest, obj: ApiKey, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        created, raw_key = ApiKey.objects.create_key(
            user=obj.user, product=obj.product, label=obj.label, expires_at=obj.expires_at
        )
        obj.pk = created.pk
        obj.prefix = created.prefix
        messages.warning(
            request,
            format_html(
                "New API key for {}: <code class=\"new-api-key\">{}</code> — copy it now, it will not be shown again.",
                created.user,
                raw_key,
            ),
        )

