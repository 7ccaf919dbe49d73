"""Users, plan tiers per product, and product-scoped API keys.

Access is decided per product (stocks, options): a user's ``ProductTier`` names the ``Plan`` used for that product,
and an ``ApiKey`` belongs to one user and one product. Keys are stored as a public prefix plus a hash of the
secret; the full key exists only in the return value of ``ApiKey.objects.create_key``.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils import timezone

from accounts.plan_catalogue import DEFAULT_MAX_SUBSCRIPTIONS


class Product(models.TextChoices):
    STOCKS = "stocks", "Stocks"
    OPTIONS = "options", "Options"


class User(AbstractUser):
    """The account that pays; one live WebSocket connection at a time, whatever key or market it uses."""


class Plan(models.Model):
    """A plan tier (Free, Developer, Expert, Commercial): seeded by a data migration, editable in the admin."""

    FREE = "free"
    DEVELOPER = "developer"
    EXPERT = "expert"
    COMMERCIAL = "commercial"

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=64)
    websocket_access = models.BooleanField(default=False, help_text="May open the WebSocket stream.")
    price_monthly_eur = models.DecimalField(
        max_digits=8, decimal_places=2, null=True, blank=True, help_text="Per month, billed monthly."
    )
    price_yearly_eur = models.DecimalField(
        max_digits=8, decimal_places=2, null=True, blank=True, help_text="Per month, billed yearly."
    )
    max_subscriptions = models.PositiveIntegerField(
        default=DEFAULT_MAX_SUBSCRIPTIONS,
        help_text="Subscription items one connection may hold; the gateway refuses items beyond it.",
    )
    sort_order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "slug"]

    def __str__(self) -> str:
        return self.name


class ProductTier(models.Model):
    """Which plan a user has for one product; no row means Free."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="tiers")
    product = models.CharField(max_length=16, choices=Product.choices)
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="tiers")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "product"], name="one_tier_per_user_and_product")]

    def __str__(self) -> str:
        return f"{self.user} · {self.get_product_display()}: {self.plan}"


class ApiKeyManager(models.Manager["ApiKey"]):
    def create_key(
        self,
        user: User,
        product: str,
        label: str = "",
        expires_at=None,
    ) -> tuple[ApiKey, str]:
        """Create a key and return it with its raw value, which is never available again."""
        from accounts import keys

        generated = keys.generate_key(product)
        api_key = self.create(
            user=user,
            product=product,
            label=label,
            prefix=generated.prefix,
            secret_hash=generated.secret_hash,
            expires_at=expires_at,
        )
        return api_key, generated.raw


class ApiKey(models.Model):
    """A product-scoped API key: public ``prefix`` plus the SHA-256 of its secret part."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    product = models.CharField(max_length=16, choices=Product.choices)
    label = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=32, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiKeyManager()

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix} ({self.get_product_display()}{', ' + self.label if self.label else ''})"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def revoke(self) -> None:
        """Make the key unusable for ever; the row stays for audit."""
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])
