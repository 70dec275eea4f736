"""Run-time shape checks of the tensor functions' jaxtyping annotations.

The representation methods annotate their tensor arguments with jaxtyping shapes
(``Float[Tensor, "N layers d"]``). Checking them costs time on every call, so it is off in
production and switched on by the tests (``INFLAB_CHECK_SHAPES=1``, or
:func:`enable_shape_checks`): a decorated function is then run through
``jaxtyping.jaxtyped(typechecker=beartype.beartype)``, which fails on a wrong shape, a
wrong dtype or inconsistent dimension names across arguments and return value.
"""

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_enabled = os.environ.get("INFLAB_CHECK_SHAPES", "") not in ("", "0", "false")


def enable_shape_checks(on: bool = True) -> None:
    """Switch the checks on (tests) or off."""
    global _enabled
    _enabled = on


def shape_checks_enabled() -> bool:
    return _enabled


def checked(fn: F) -> F:
    """Check ``fn``'s jaxtyping annotations at call time while checks are enabled."""
    wrapped: list[Callable[..., Any]] = []

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not _enabled:
            return fn(*args, **kwargs)
        if not wrapped:
            # beartype is a test dependency: imported only when checks are on.
            from beartype import beartype
            from jaxtyping import jaxtyped

            wrapped.append(jaxtyped(typechecker=beartype)(fn))
        return wrapped[0](*args, **kwargs)

    return wrapper  # type: ignore[return-value]
