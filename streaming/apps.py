from django.apps import AppConfig


class StreamingConfig(AppConfig):
    name = "streaming"
    verbose_name = "Streaming gateway"

    def ready(self) -> None:
        from streaming.gateway import rechecks  # noqa: F401  (connects the live re-check receiver)
