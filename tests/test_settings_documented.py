"""Every environment variable the settings read is documented, once, in the settings' docstring."""

from __future__ import annotations

import re
from pathlib import Path

from hmsadmin import settings

# The ways settings.py reads a variable: os.environ.get("X" ...), os.environ["X"], _env_int("X" ...), ...
_READ = re.compile(r"""(?:os\.environ\.get|os\.environ\[|_env_[a-z]+)\(?\s*["']([A-Z][A-Z0-9_]+)["']""")
# A documented variable: named at the head of a "- ``X``, ``Y``: what they do" line.
_BULLET_HEAD = re.compile(r"^- ((?:``[A-Z][A-Z0-9_]+``(?:, )?)+):", re.MULTILINE)


def test_every_variable_the_settings_read_is_documented_once() -> None:
    read = set(_READ.findall(Path(settings.__file__).read_text(encoding="utf-8")))
    documented = [
        name for head in _BULLET_HEAD.findall(settings.__doc__ or "") for name in re.findall(r"``(\w+)``", head)
    ]

    assert len(read) > 25  # the pattern finds the reads at all
    assert sorted(read - set(documented)) == [], "read from the environment but not documented"
    assert sorted(name for name in set(documented) if documented.count(name) > 1) == [], "documented twice"
