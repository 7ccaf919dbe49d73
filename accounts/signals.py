"""Keep cached key resolutions true: any change to a key, a user, a tier or a plan forgets what it affects."""

from __future__ import annotations

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from accounts import keys
from accounts.models import ApiKey, Plan, ProductTier, User


def prefixes_of_user(user_id: int) -> list[str]:
    return list(ApiKey.objects.filter(user_id=user_id).values_list("prefix", flat=True))


@receiver([post_save, post_delete], sender=ApiKey)
def forget_key(sender, instance: ApiKey, **kwargs) -> None:
    keys.forget([instance.prefix])


@receiver([post_save, post_delete], sender=ProductTier)
def forget_tier_keys(sender, instance: ProductTier, **kwargs) -> None:
    keys.forget(prefixes_of_user(instance.user_id))


@receiver(post_save, sender=User)
def forget_user_keys(sender, instance: User, created: bool, **kwargs) -> None:
    if not created:
        keys.forget(prefixes_of_user(instance.pk))


@receiver([post_save, post_delete], sender=Plan)
def forget_plan_keys(sender, instance: Plan, **kwargs) -> None:
    affected = ApiKey.objects.all()
    if instance.slug != Plan.FREE:
        affected = affected.filter(user__tiers__plan=instance)
    keys.forget(list(affected.values_list("prefix", flat=True).distinct()))
