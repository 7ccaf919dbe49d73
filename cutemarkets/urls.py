"""HTTP routes: the stream explorer and the Django admin (the WebSocket routes live in ``streaming.routing``)."""

from django.contrib import admin
from django.urls import path

from streaming.explorer import explorer

urlpatterns = [
    path("", explorer, name="explorer"),
    path("admin/", admin.site.urls),
]
