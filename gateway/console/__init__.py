"""The web console served at ``/ui`` (ADR 0021): server-rendered pages whose scripts call the public API with the
session cookie (session.py) and a CSRF header. Importing this package stays light: the auth module uses
session.py, and the routes (routes.py) are imported by the app only."""
