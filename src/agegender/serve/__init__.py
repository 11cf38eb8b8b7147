"""The HTTP service (``agegender serve``): API, metrics and the web page.

Sits on top of the pipeline; nothing below imports it. Needs the ``serve`` extras
(FastAPI, uvicorn, python-multipart, prometheus-client).
"""

from .app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
