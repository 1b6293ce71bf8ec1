"""The page a locked-out sign-in gets: 429, saying when to try again."""

from __future__ import annotations

import math
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from busapp.signin import signin_retry_at


def locked_out(request: HttpRequest, *args: Any) -> HttpResponse:
    """django-axes' ``AXES_LOCKOUT_CALLABLE``: what a refused sign-in is told, with ``Retry-After``.

    axes passes the original response and the credentials in an order that differs between
    its sync and async paths; neither is needed here.
    """
    retry_at = signin_retry_at(request)
    seconds = max(1, math.ceil((retry_at - timezone.now()).total_seconds()))
    context = {"retry_at": retry_at, "minutes": math.ceil(seconds / 60)}
    response = render(request, "registration/locked_out.html", context, status=429)
    response["Retry-After"] = str(seconds)
    return response
