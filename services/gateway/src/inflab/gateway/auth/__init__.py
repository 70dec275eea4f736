"""Accounts and sign-in: passwords (argon2id in a bounded thread pool), sessions and API
tokens (with scopes and expiry), verified addresses and mailed single-use links, rate
limits shared through Postgres, Google sign-in, and the row-level-security scoping of
each request's database session. docs/security.md is the operator's view of all of it.

How a request is authenticated (``inflab.gateway.deps.current_caller``):

- ``Authorization: Bearer ils_...``: an access token from sign-in (an ``auth_sessions`` row);
- ``Authorization: Bearer ilp_...``: a personal API token (``api_tokens``), for pipelines,
  limited by its scope (:mod:`.scopes`);
- the session cookie (``__Host-inflab_session``, or ``inflab_session`` where
  ``cookie_secure`` is off; :mod:`.cookies`): a browser session; a state-changing
  request must also send the session's CSRF token in the ``X-CSRF-Token`` header.

Only digests of tokens and links are stored (SHA-256); passwords are argon2id.
"""
