"""Keep cached key resolutions true: any change to a key, a user, a tier or a plan forgets what it affects; and
keep the set of issued key prefixes (``accounts.keys``) true as keys are created and deleted.

Each change also sends ``entitlements_changed`` with the users concerned, so that live connections can re-check
their admission at once (the streaming app listens).
"""

from __future__ import annotations

from django.db.models.signals import post_delete, post_save
from django.dispatch import Signal, receiver

from accounts import keys
from accounts.models import ApiKey, Plan, ProductTier, User

entitlements_changed = Signal()  # sent with user_ids: list[int]


def _changed(keys_of_users) -> None:
    rows = list(keys_of_users.values_list("prefix", "user_id").distinct())
    keys.forget([prefix for prefix, _ in rows])
    user_ids = sorted({user_id for _, user_id in rows})
    if user_ids:
        entitlements_changed.send(sender=ApiKey, user_ids=user_ids)


@receiver([post_save, post_delete], sender=ApiKey)
def key_changed(sender, instance: ApiKey, created: bool = False, **kwargs) -> None:
    keys.forget([instance.prefix])
    if not created:
        entitlements_changed.send(sender=ApiKey, user_ids=[instance.user_id])


@receiver(post_save, sender=ApiKey)
def key_issued(sender, instance: ApiKey, created: bool, **kwargs) -> None:
    if created:
        keys.register_prefixes([instance.prefix])


@receiver(post_delete, sender=ApiKey)
def key_deleted(sender, instance: ApiKey, **kwargs) -> None:
    keys.unregister_prefix(instance.prefix)


@receiver([post_save, post_delete], sender=ProductTier)
def tier_changed(sender, instance: ProductTier, **kwargs) -> None:
    _changed(ApiKey.objects.filter(user_id=instance.user_id))


@receiver(post_save, sender=User)
def user_changed(sender, instance: User, created: bool, **kwargs) -> None:
    if not created:
        _changed(ApiKey.objects.filter(user_id=instance.pk))


@receiver([post_save, post_delete], sender=Plan)
def plan_changed(sender, instance: Plan, **kwargs) -> None:
    affected = ApiKey.objects.all()
    if instance.slug != Plan.FREE:
        affected = affected.filter(user__tiers__plan=instance)
    _changed(affected)
