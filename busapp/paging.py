"""One keyset paginator for every long list: history, the audit log, open dead letters.

A page is read from a position (the key of a row and a direction) by a range on the key, so
every page costs the same however deep it is, and stays stable while new rows arrive. Page
links carry the position signed, so an edited link is refused, not trusted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.core import signing
from django.db.models import Model, QuerySet

from busapp.errors import HistoryQueryError

Row = TypeVar("Row", bound=Model)
DAMAGED_LINK = "this page link was changed or is damaged: start again from the first page"


@dataclass(frozen=True)
class Position:
    """Where a page starts: the key of the row before it, and whether the page goes to older rows."""

    key: tuple[Any, ...]
    older: bool


@dataclass
class Page(Generic[Row]):
    """One page of rows, newest first, with the signed positions of the pages on either side (None: none)."""

    rows: list[Row]
    older: str | None
    newer: str | None


@dataclass(frozen=True)
class Keyset:
    """How a list is paged: its key fields, newest first, each with its type, and the salt of its page links.

    One field (``seq``), or two: a time and the id that breaks its ties (``timestamp``, ``id``).
    """

    fields: tuple[tuple[str, type], ...]
    salt: str

    def key(self, row: Model) -> tuple[Any, ...]:
        """A row's key."""
        return tuple(getattr(row, name) for name, _ in self.fields)

    def encode(self, key: Sequence[Any], *, older: bool) -> str:
        """A signed page link position."""
        values = "|".join(value.isoformat() if isinstance(value, dt.datetime) else str(value) for value in key)
        return signing.Signer(salt=self.salt).sign(f"{'o' if older else 'n'}{values}")

    def decode(self, text: str) -> Position:
        """The position a page link carries; a damaged or edited one is refused with HistoryQueryError."""
        try:
            raw = signing.Signer(salt=self.salt).unsign(text)
            values = raw[1:].split("|")
            if raw[0] not in "on" or len(values) != len(self.fields):
                raise ValueError(raw)
            key = tuple(
                dt.datetime.fromisoformat(value) if kind is dt.datetime else kind(value)
                for value, (_, kind) in zip(values, self.fields, strict=True)
            )
        except (signing.BadSignature, ValueError, IndexError):
            raise HistoryQueryError([{"path": "cursor", "message": DAMAGED_LINK}]) from None
        return Position(key, raw[0] == "o")

    def ordered(self, rows: QuerySet[Row], *, older: bool) -> QuerySet[Row]:
        """The rows in page order: newest first for older pages, oldest first for newer ones."""
        return rows.order_by(*(f"-{name}" if older else name for name, _ in self.fields))

    def beyond(self, rows: QuerySet[Row], key: Sequence[Any], *, older: bool) -> QuerySet[Row]:
        """The rows strictly older (or newer) than ``key``.

        Two fields are written as a range on the first plus a tie-break on the second, so the
        databases walk the (first, second) index from the key instead of reading what lies before it.
        """
        (first, _), *rest = self.fields
        if not rest:
            return rows.filter(**{f"{first}__{'lt' if older else 'gt'}": key[0]})
        second = rest[0][0]
        if older:
            return rows.filter(**{f"{first}__lte": key[0]}).exclude(**{first: key[0], f"{second}__gte": key[1]})
        return rows.filter(**{f"{first}__gte": key[0]}).exclude(**{first: key[0], f"{second}__lte": key[1]})

    def up_to(self, rows: QuerySet[Row], key: Sequence[Any], *, older: bool) -> QuerySet[Row]:
        """The rows on the near side of ``key`` for a page going older (or newer), ``key``'s own row included."""
        (first, _), *rest = self.fields
        near = rows.filter(**{f"{first}__{'gte' if older else 'lte'}": key[0]})
        if not rest:
            return near
        return near.exclude(**{first: key[0], f"{rest[0][0]}__{'lt' if older else 'gt'}": key[1]})

    def page(self, rows: QuerySet[Row], position: Position | None, *, size: int) -> Page[Row]:
        """The page of ``rows`` at ``position`` (None: the newest page)."""
        older = position is None or position.older
        ahead = rows if position is None else self.beyond(rows, position.key, older=older)
        found = list(self.ordered(ahead, older=older)[: size + 1])
        more = len(found) > size
        return self.page_of(found[:size], position, onward=self.key(found[size - 1]) if more else None)

    def page_of(self, found: list[Row], position: Position | None, *, onward: Sequence[Any] | None) -> Page[Row]:
        """A page of rows read in page order from ``position``, newest first; ``onward``: the next page's key."""
        older = position is None or position.older
        ahead = self.encode(onward, older=older) if onward is not None else None
        rows = found if older else found[::-1]
        back = None
        if position is not None and rows:
            back = self.encode(self.key(rows[0] if older else rows[-1]), older=not older)
        return Page(rows, older=ahead if older else back, newer=back if older else ahead)
