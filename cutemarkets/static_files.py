"""WhiteNoise for Django under ASGI: the admin's and the browser page's static files, served by the app itself.

WhiteNoise answers with a response that iterates its file synchronously, which Django's ASGI handler can only
consume by reading the whole file in a thread, warning about it in every process. This subclass streams the file
through an async iterator instead, reading each chunk in a worker thread so the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import IO, Any

from django.http import HttpRequest, HttpResponse
from whitenoise.middleware import WhiteNoiseMiddleware

CHUNK_BYTES = 64 * 1024


class AsgiWhiteNoiseMiddleware(WhiteNoiseMiddleware):
    @staticmethod
    def serve(static_file: Any, request: HttpRequest) -> HttpResponse:
        response = WhiteNoiseMiddleware.serve(static_file, request)
        file = response.file_to_stream
        if file is not None:  # None for HEAD and 304 answers, which have no body
            response.streaming_content = _chunks(file)
        return response


async def _chunks(file: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(file.read, CHUNK_BYTES):
        yield chunk
