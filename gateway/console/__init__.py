"""The store's console: a few live pages in the browser, served by the daemon (issue 18).

`settings` (its configuration section) is light; `server` (the component, Starlette on uvicorn)
and `accounts` (local users, Argon2id hashes) are imported only where they are used.
"""
