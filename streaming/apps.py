from django.apps import AppConfig


class StreamingConfig(AppConfig):
    name = "streaming"
    verbose_name = "Streaming gateway"

    def ready(self) -> None:
        from streaming import control  # noqa: F401  (connects the live re-check receiver)
