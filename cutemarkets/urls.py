"""HTTP routes: the Django admin (the WebSocket routes live in ``streaming.routing``)."""

from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("admin/", admin.site.urls),
]
