"""Django's SQLite backend, with the process's write transactions queued on a lock (see ``base``)."""
