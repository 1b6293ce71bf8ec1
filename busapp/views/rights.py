"""/access/ for bus admins: the matrix of topics by people and groups, grants, revokes, roles and service tokens."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group, User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from busapp.actions.access import grant_create, grant_revoke, role_member_set
from busapp.actions.tokens import service_token_create, service_token_revoke
from busapp.errors import BusInputError
from busapp.forms import GrantForm, RevokeForm, RoleForm, ServiceTokenForm
from busapp.models import AuditAction, ServiceToken, Topic
from busapp.permissions import MANAGE_ACCESS, Role, principal_word, right_word
from busapp.selectors import (
    access_matrix,
    grant_key,
    grant_principal,
    grants_by_keys,
    grants_listed,
    principal_label,
)
from busapp.views.access import refuse_audited, signed_in_user


def _admin(request: HttpRequest) -> User:
    """The signed-in person, if they may manage access (Bus admins); otherwise 403 (audited for a POST)."""
    user = signed_in_user(request)
    if user.is_active and user.has_perm(f"busapp.{MANAGE_ACCESS}"):
        return user
    message = "managing access is for bus admins"
    if request.method in ("GET", "HEAD"):  # looking is refused; trying to change access is also written down
        raise PermissionDenied(message)
    refuse_audited(request, AuditAction.ACCESS_REFUSED, "access", message)


def _principal_choices() -> list[tuple[str, str]]:
    """Every group and active person, as the grant form offers them."""
    groups = [(f"group:{g.pk}", f"group {g.name}") for g in Group.objects.order_by("name")]
    people = [(f"user:{u.pk}", u.get_username()) for u in User.objects.filter(is_active=True).order_by("username")]
    return groups + people


def _principal(choice: str) -> User | Group:
    """The person or group a grant form's choice names."""
    kind, _, pk = choice.partition(":")
    return User.objects.get(pk=pk) if kind == "user" else Group.objects.get(pk=pk)


def _topic_names() -> list[str]:
    """Every topic's name, as the forms offer them."""
    return list(Topic.objects.order_by("name").values_list("name", flat=True))


def _usernames() -> list[str]:
    """Every active person's username."""
    return list(User.objects.filter(is_active=True).order_by("username").values_list("username", flat=True))


def _refused_on(form: forms.Form, refused: BusInputError) -> None:
    """Put a service's refusal under the form fields it names (or above the form)."""
    for error in refused.errors:
        field = error["path"].strip("/").split("/")[0]
        form.add_error(field if field in form.fields else None, error["message"])


def _matrix_page(request: HttpRequest, *, status: int = 200, **bound: forms.Form) -> HttpResponse:
    """The access page, narrowed to a person or group and a topic (``who``, ``topic``), any refused form bound."""
    who, shown_topic = request.GET.get("who", "").strip(), request.GET.get("topic", "").strip()
    every_topic = list(Topic.objects.order_by("name"))
    names = [topic.name for topic in every_topic]
    topics = [topic for topic in every_topic if not shown_topic or topic.name == shown_topic]
    grants = grants_listed()
    listed = [
        (grant_key(grant), principal_label(grant_principal(grant)), grant)
        for grant in grants
        if _named(principal_label(grant_principal(grant)), who) and grant.content_object in topics
    ]
    context: dict[str, Any] = {
        "topics": topics,
        "topic_names": names,
        "who": who,
        "shown_topic": shown_topic,
        "rows": [row for row in access_matrix(topics) if _named(row.label, who)],
        "grants": listed,
        "grant_form": bound.get("grant_form") or GrantForm(principals=_principal_choices(), topic_names=names),
        "revoke_form": bound.get("revoke_form") or RevokeForm(grant_keys=[grant_key(g) for g in grants]),
        "role_form": bound.get("role_form") or RoleForm(usernames=_usernames()),
    }
    return render(request, "access/matrix.html", context, status=status)


def _named(label: str, who: str) -> bool:
    """Whether a person's or group's label (``user:policy2``) holds the text asked for (any, when none is)."""
    return who.casefold() in label.split(":", 1)[-1].casefold()


@login_required
@require_GET
def access_revoke_confirm(request: HttpRequest) -> HttpResponse:
    """Before revoking from a chip: what would go (each grant named in full), a reason, and a yes."""
    _admin(request)
    keys = request.GET.getlist("grants")
    chosen = [(grant_key(grant), principal_label(grant_principal(grant)), grant) for grant in grants_by_keys(keys)]
    return render(request, "access/revoke_confirm.html", {"grants": chosen})


@login_required
@require_GET
def access_page(request: HttpRequest) -> HttpResponse:
    """Who holds what on which topic, and the forms to grant, revoke and change roles."""
    _admin(request)
    return _matrix_page(request)


@login_required
@require_POST
def access_grant(request: HttpRequest) -> HttpResponse:
    """Grant rights on topics to a person or group, with a reason and an optional expiry."""
    actor = _admin(request)
    form = GrantForm(request.POST, principals=_principal_choices(), topic_names=_topic_names())
    if form.is_valid():
        data = form.cleaned_data
        principal = _principal(data["principal"])
        try:
            grant_create(
                principal=principal,
                topics=list(Topic.objects.filter(name__in=data["topics"])),
                rights=data["rights"],
                reason=data["reason"],
                expires_at=data["expires_at"],
                actor=actor,
            )
        except BusInputError as refused:
            _refused_on(form, refused)
        else:
            until = f" until {data['expires_at']:%Y-%m-%d %H:%M} UTC" if data["expires_at"] else ""
            rights, topics = ", ".join(map(right_word, data["rights"])), ", ".join(data["topics"])
            whom = principal_word(principal_label(principal))
            messages.success(request, f"Granted {rights} on {topics} to {whom}{until}.")
            return redirect("access")
    return _matrix_page(request, status=400, grant_form=form)


@login_required
@require_POST
def access_revoke(request: HttpRequest) -> HttpResponse:
    """Revoke the ticked grants, with a reason."""
    actor = _admin(request)
    form = RevokeForm(request.POST, grant_keys=[grant_key(grant) for grant in grants_listed()])
    if form.is_valid():
        try:
            count = grant_revoke(
                grants=grants_by_keys(form.cleaned_data["grants"]), reason=form.cleaned_data["reason"], actor=actor
            )
        except BusInputError as refused:
            _refused_on(form, refused)
        else:
            messages.success(request, f"Revoked {count} grant{'s' if count != 1 else ''}.")
            return redirect("access")
    return _matrix_page(request, status=400, revoke_form=form)


@login_required
@require_POST
def access_role(request: HttpRequest) -> HttpResponse:
    """Add a person to a role or remove them from it (never the last Bus admin)."""
    actor = _admin(request)
    form = RoleForm(request.POST, usernames=_usernames())
    if form.is_valid():
        data = form.cleaned_data
        try:
            role_member_set(
                user=User.objects.get(username=data["username"]),
                role=Role(data["role"]),
                member=data["member"],
                reason=data["reason"],
                actor=actor,
            )
        except BusInputError as refused:
            _refused_on(form, refused)
        else:
            change = "added to" if data["member"] else "removed from"
            messages.success(request, f"{data['username']} {change} {data['role']}.")
            return redirect("access")
    return _matrix_page(request, status=400, role_form=form)


def _tokens_page(
    request: HttpRequest, form: ServiceTokenForm | None = None, *, secret: str = "", status: int = 200
) -> HttpResponse:
    """The service tokens, the form to issue one, and a new token's secret (shown this once)."""
    tokens = ServiceToken.objects.prefetch_related("topics").select_related("created_by", "revoked_by", "subscriber")
    context = {"tokens": tokens, "form": form or ServiceTokenForm(topic_names=_topic_names()), "secret": secret}
    response = render(request, "access/tokens.html", context, status=status)
    if secret:
        response["Cache-Control"] = "no-store"  # the secret must not stay in any cache
    return response


@login_required
def access_tokens(request: HttpRequest) -> HttpResponse:
    """GET: the service tokens; POST: issue one (its secret is shown once, on the answer to this POST)."""
    actor = _admin(request)
    if request.method != "POST":
        return _tokens_page(request)
    form = ServiceTokenForm(request.POST, topic_names=_topic_names())
    if form.is_valid():
        data = form.cleaned_data
        try:
            token, secret = service_token_create(
                name=data["name"],
                topics=list(Topic.objects.filter(name__in=data["topics"])),
                actor=actor,
                can_publish=data["can_publish"],
                can_view=data["can_view"],
                expires_at=data["expires_at"],
                subscriber=data["subscriber"],
            )
        except BusInputError as refused:
            _refused_on(form, refused)
        except forms.ValidationError as invalid:  # the model's own checks (the service name's rule)
            for field, problems in invalid.message_dict.items():
                form.add_error(field if field in form.fields else None, problems)
        else:
            messages.success(request, f"Token issued for {token.name}. Copy it now: it is not shown again.")
            return _tokens_page(request, secret=secret)
    return _tokens_page(request, form, status=400)


@login_required
@require_POST
def access_token_revoke(request: HttpRequest, prefix: str) -> HttpResponse:
    """Revoke a service token for good."""
    actor = _admin(request)
    try:
        token = service_token_revoke(prefix=prefix, actor=actor)
    except BusInputError as refused:
        messages.error(request, str(refused.errors[0]["message"]))
    else:
        messages.success(request, f"Token {token} revoked: every request with it is now refused.")
    return redirect("access-tokens")
