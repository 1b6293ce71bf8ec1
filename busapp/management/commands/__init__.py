"""``manage.py`` commands: the bus worker, publishing, schemas, tokens, the audit check, demo data."""
