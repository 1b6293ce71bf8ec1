"""HMS Bus Admin: the event bus's topics, schemas, publishing, history, dead letters and audit log."""
