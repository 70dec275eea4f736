"""Accounts and sign-in: password hashing, sessions and API tokens, rate limits, Google
sign-in, and the row-level-security scoping of each request's database session.

How a request is authenticated (``inflab.gateway.deps.current_user``):

- ``Authorization: Bearer ils_...``: an access token from sign-in (an ``auth_sessions`` row);
- ``Authorization: Bearer ilp_...``: a personal API token (``api_tokens``), for pipelines;
- the ``inflab_session`` cookie (httpOnly, SameSite=Lax, Secure over https): a browser
  session; a state-changing request must also echo the session's CSRF token in the
  ``X-CSRF-Token`` header (double submit: the token is readable from the ``inflab_csrf``
  cookie and from ``/api/auth/me``).

Only SHA-256 hashes of tokens are stored; passwords are argon2id.
"""
