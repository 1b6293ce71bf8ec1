"""The JSON API: publish over HTTP with a service token or a browser session, list topics, OpenAPI."""
