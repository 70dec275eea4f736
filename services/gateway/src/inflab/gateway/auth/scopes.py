"""What an API token's scope lets it call. Sessions (cookie or access token) have the
``full`` scope.

- ``full``: everything an API token can do (API tokens, the password and "sign out
  everywhere" are managed from a signed-in session only, whatever the scope);
- ``read``: GET requests only;
- ``submit``: submit runs (create an experiment, start a run of it) and read the runs of
  the experiments the token created (see ``deps.owned_run``); nothing else. Listed by
  route, so a route added later is closed to it until it is added here.
"""

from __future__ import annotations

from inflab.gateway.auth.sessions import Scope

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: (method, route template) a ``submit`` token may call.
SUBMIT_ROUTES = frozenset({
    ("POST", "/api/experiments"),
    ("POST", "/api/experiments/{experiment_id}/runs"),
    ("GET", "/api/runs/{run_id}"),
    ("GET", "/api/runs/{run_id}/events"),
    ("GET", "/api/runs/{run_id}/results"),
    ("GET", "/api/runs/{run_id}/predictions"),
    ("GET", "/api/runs/{run_id}/predictions/epochs"),
})


def refusal(scope: Scope, method: str, route: str | None) -> str | None:
    """Why a token of ``scope`` may not call ``method route``; None when it may."""
    if scope == "full":
        return None
    if scope == "read":
        return None if method in SAFE_METHODS else "this API token is read-only (scope 'read')"
    if (method, route) in SUBMIT_ROUTES:
        return None
    return "this API token can only submit runs and read them (scope 'submit')"
