"""Every state change of the bus, one module per domain: each action validates, writes and appends its audit entry.

Views, the API, the admin, commands and the worker call actions; a rule (who may, four eyes)
lives in its action alone. Issue 15 moves the rest here from ``services``, ``grants``,
``tokens``, ``sensitivity`` and the worker's ``recording``; ``filters`` is the first.
"""
