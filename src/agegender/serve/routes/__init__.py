"""The routers, one per concern; `create_app` includes them all."""

from __future__ import annotations

from . import estimate, health, models, pages, sessions

ROUTERS = (estimate.router, sessions.router, models.router, health.router, pages.router)

__all__ = ["ROUTERS"]
