"""The kronfluence internals EK-FAC relies on (``methods/kronfluence_adapter.py``) are
still there: after a kronfluence upgrade this fails naming what changed, before any
EK-FAC score silently drifts."""

from __future__ import annotations

import pytest

pytest.importorskip("kronfluence")

from inflab.influence.methods import kronfluence_adapter as adapter  # noqa: E402


def test_the_internals_ekfac_relies_on_are_unchanged():
    problems = adapter.check_internals()
    assert not problems, (
        f"kronfluence {adapter.version()} (EK-FAC was written against {adapter.TESTED_VERSION}) changed what "
        "inflab.influence.methods.kronfluence_adapter relies on:\n- " + "\n- ".join(problems)
        + "\nAdapt the adapter (or run EK-FAC with scoring='kronfluence', lambda_pass='kronfluence')."
    )


def test_a_changed_preconditioner_is_caught(monkeypatch):
    """The check compares by behaviour: a different heuristic damping on our side shows."""
    from kronfluence.utils import constants

    monkeypatch.setattr(constants, "HEURISTIC_DAMPING_SCALE", 0.2)
    problems = adapter.check_internals()
    assert len(problems) == 1 and problems[0].startswith("the EK-FAC preconditioner: Ekfac.prepare"), problems


def test_hooks_kept_after_the_backward_are_caught(monkeypatch):
    """If the covariance tracker kept its backward hook, our extra backwards would enter its
    covariances: the check names it."""
    from kronfluence.module.tracker.factor import CovarianceTracker

    def keep_hooks(self):
        original(self)
        self.cached_hooks.append(object())

    original = CovarianceTracker.register_hooks
    monkeypatch.setattr(CovarianceTracker, "register_hooks", keep_hooks)
    problems = adapter.check_internals()
    assert problems == ["the wrapped modules: the covariance tracker keeps its backward hook after the first backward"]


def test_a_missing_parameter_is_caught(monkeypatch):
    from kronfluence.analyzer import Analyzer

    monkeypatch.setattr(Analyzer, "load_self_scores", lambda self, name: None)
    problems = adapter.check_internals()
    assert problems == ["Analyzer's API: parameters no longer taken: {'load_self_scores': ['scores_name']}"]
