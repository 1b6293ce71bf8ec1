"""The audit log for auditors: filtered pages, the chain's status, a check on demand, and exports."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from busapp.actions.exports import audit_export_start
from busapp.audit import audit_verify
from busapp.forms import AuditFilterForm
from busapp.history import audit_filtered, audit_page
from busapp.models import AuditAction, AuditCheck, AuditEntry, AuditHead, SavedFilterPage
from busapp.paging import Page
from busapp.permissions import EXPORT_TOPIC
from busapp.views.access import refuse_audited, signed_in_user
from busapp.views.history import EXPORT_FORMATS, export_response, filtered_list, form_problems


def _auditing_user(request: HttpRequest) -> User:
    """The signed-in person, if their role reads the audit log (auditors and bus admins)."""
    user = signed_in_user(request)
    if not user.has_perm("busapp.view_auditentry"):
        raise PermissionDenied("the audit log is for auditors and bus admins")
    return user


def chain_status() -> dict[str, object]:
    """The audit banner: the latest check, the latest of the whole chain, a broken entry, entries since."""
    latest = AuditCheck.objects.first()
    head = AuditHead.objects.filter(pk=1).values_list("seq", flat=True).first() or 0
    broken = None
    if latest is not None and latest.broken_seq is not None:
        broken = AuditEntry.objects.filter(seq=latest.broken_seq).first()
    return {
        "check": latest,
        "whole": AuditCheck.objects.filter(from_seq=1).first(),
        "broken_entry": broken,
        "head_seq": head,
        "unchecked": max(0, head - latest.through_seq) if latest is not None and latest.intact else None,
    }


@login_required
@require_GET
def audit_log(request: HttpRequest) -> HttpResponse:
    """Every audit entry, newest first, filtered by actor, action, target and time, with the chain's status."""
    user = _auditing_user(request)
    form = AuditFilterForm(request.GET)

    def page_at(cursor: str | None) -> Page[AuditEntry]:
        return audit_page(audit_filtered(**form.cleaned_data), cursor)

    context, status = filtered_list(request, user, form, page_at, SavedFilterPage.AUDIT)
    context |= {"can_export": user.has_perm(f"busapp.{EXPORT_TOPIC}"), **chain_status()}
    return render(request, "audit/list.html", context, status=status)


@login_required
@require_POST
def audit_check_now(request: HttpRequest) -> HttpResponse:
    """Check the entries written since the last intact check (the worker checks the whole chain hourly)."""
    user = _auditing_user(request)
    report = audit_verify(resume=True, checked_by=user.get_username())
    if report.intact:
        messages.success(request, f"The chain holds through entry #{report.last_seq:,}.")
    else:
        messages.error(request, f"The chain is broken at entry #{report.broken_seq:,}: {report.problem}")
    return redirect("audit-log")


@login_required
@require_GET
def audit_export(request: HttpRequest, fmt: str) -> HttpResponseBase:
    """The filtered audit log as CSV or NDJSON, streamed, for holders of the export right; the export is audited."""
    user = _auditing_user(request)
    if fmt not in EXPORT_FORMATS:
        return HttpResponse(f"unknown export format {fmt!r}: use csv or ndjson", status=404, content_type="text/plain")
    if not user.has_perm(f"busapp.{EXPORT_TOPIC}"):
        message = "exporting the audit log needs the export right"
        refuse_audited(request, AuditAction.AUDIT_EXPORT_REFUSED, "audit", message, missing_right=EXPORT_TOPIC)
    form = AuditFilterForm(request.GET)
    if not form.is_valid():
        message = f"the export's filter is not valid: {form_problems(form)}"
        return HttpResponse(message, status=400, content_type="text/plain")
    export = audit_export_start(actor=user, fmt=fmt, filters=form.cleaned_data)
    return export_response(request, export.lines, fmt=fmt, rows=export.rows, name="audit")
