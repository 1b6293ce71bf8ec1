"""WSGI entry point (HTTP only; the product runs on ASGI for its websockets)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hmsadmin.settings")
application = get_wsgi_application()
