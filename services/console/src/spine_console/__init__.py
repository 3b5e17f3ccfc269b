"""The AI Spine console (DESIGN §13): server-rendered pages over the gateway's public API.

It holds no Kafka or database credentials: everything it shows or does goes through the
HTTP API with the session's own short-lived key, so it can do nothing the user's key could
not do through the API."""

__version__ = "0.1.0"
