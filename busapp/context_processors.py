"""What every page's frame needs: the navigation this person may use and the role they act in."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.http import HttpRequest
from django.urls import reverse


def navigation(request: HttpRequest) -> dict[str, Any]:
    """The links of the top bar (only what the person's role allows, the current one marked) and their role."""
    user = getattr(request, "user", None)
    # Only people have a frame: a service token's caller (the API docs page, say) gets none.
    if not isinstance(user, User) or not user.is_authenticated:
        return {}
    links = [
        ("Dashboard", reverse("dashboard")),
        ("Topics", reverse("topic-list")),
        ("Live", reverse("live")),
        ("Dead letters", reverse("dead-letters")),
        ("History", reverse("event-list")),
    ]
    if user.has_perm("busapp.view_auditentry"):
        links.append(("Audit", reverse("audit-log")))
    if user.has_perm("busapp.manage_access"):
        links.append(("Access", reverse("access")))
    if user.is_superuser:  # everyone else does everything in the product; Django's admin is the advanced site
        links.append(("Advanced (Django admin)", reverse("admin:index")))
    path = request.path
    current = [(label, href, path == href or (href != "/" and path.startswith(href))) for label, href in links]
    roles = ", ".join(sorted(group.name for group in user.groups.all())) or ("superuser" if user.is_superuser else "")
    return {"nav_links": current, "nav_role": roles}
