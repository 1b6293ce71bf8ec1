"""Every state change of the bus, one module per domain: each action validates, writes and appends its audit entry.

Views, the API, the admin, commands and the worker call actions; a rule (who may, four eyes)
lives in its action alone: ``publishing``, ``requests``, ``dead_letters``, ``registry``,
``access`` (grants, roles, expiry), ``tokens``, ``sensitivity``, ``filters``, ``tap`` (what
the bus worker records), ``exports`` (history and audit-log exports, each written down) and
``refusals`` (refused attempts, written down once).
"""
