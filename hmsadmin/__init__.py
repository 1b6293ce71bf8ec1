"""The Django project: settings, URLs, ASGI application."""
