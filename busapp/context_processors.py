"""What every page's frame needs: the navigation this person may use and the role they act in."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.http import HttpRequest
from django.urls import reverse

from busapp.selectors import publish_requests_for_approver_count


def navigation(request: HttpRequest) -> dict[str, Any]:
    """The links of the top bar (only what the person's role allows, the current one marked) and their role."""
    user = getattr(request, "user", None)
    # Only people have a frame: a service token's caller (the API docs page, say) gets none.
    if not isinstance(user, User) or not user.is_authenticated:
        return {}
    # (label, address, badge): the badge counts what waits for this person there.
    links = [
        ("Dashboard", reverse("dashboard"), 0),
        ("Topics", reverse("topic-list"), 0),
        ("Live", reverse("live"), 0),
        ("Dead letters", reverse("dead-letters"), 0),
        ("History", reverse("event-list"), 0),
        ("Requests", reverse("publish-requests"), publish_requests_for_approver_count(user)),
    ]
    if user.has_perm("busapp.view_subscriber"):
        links.append(("Subscribers", reverse("subscribers"), 0))
    if user.has_perm("busapp.view_auditentry"):
        links.append(("Audit", reverse("audit-log"), 0))
    if user.has_perm("busapp.manage_access"):
        links.append(("Access", reverse("access"), 0))
        links.append(("Service tokens", reverse("access-tokens"), 0))
    if user.is_superuser:  # everyone else does everything in the product; Django's admin is the advanced site
        links.append(("Advanced (Django admin)", reverse("admin:index"), 0))
    path = request.path
    # The one current link: the longest address the page is at or under (/access/tokens/, not /access/).
    at = [href for _, href, _ in links if path == href or (href != "/" and path.startswith(href))]
    here = max(at, key=len, default=None)
    current = [(label, href, href == here, badge) for label, href, badge in links]
    roles = ", ".join(sorted(group.name for group in user.groups.all())) or ("superuser" if user.is_superuser else "")
    return {"nav_links": current, "nav_role": roles}
