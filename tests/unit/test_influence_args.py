"""Method arguments from a run's ``influence_args``: typed, checked, and refused by name
before any work; a request that cannot run is described without touching Ray."""

from __future__ import annotations

import uuid

import pytest

from inflab.common.messages import RunSpec
from inflab.influence.methods import METHODS
from inflab.influence.methods.datainf import DataInfArgs
from inflab.influence.methods.ekfac import EKFACArgs
from inflab.influence.methods.tracin import TracInArgs
from inflab.influence.service import InfluenceJobRequest, request_problem


def test_every_method_has_an_argument_dataclass_with_defaults():
    for name, cls in METHODS.items():
        opts = cls.Args.from_dict({})
        assert opts.batch_size >= 1 and opts.max_length >= 1, name
        assert set(cls.variants) >= {"raw"}


def test_values_are_coerced_to_the_field_types():
    assert DataInfArgs.from_dict({"damping": "0.5", "batch_size": 4.0}).damping == 0.5
    assert DataInfArgs.from_dict({"damping": None}).damping is None
    assert EKFACArgs.from_dict({"use_empirical_fisher": "true"}).use_empirical_fisher is True
    assert EKFACArgs.from_dict({"strategy": "kfac"}).strategy == "kfac"
    with pytest.raises(ValueError, match="ekfac: argument strategy"):
        EKFACArgs.from_dict({"strategy": "newton"})
    with pytest.raises(ValueError, match="tracin: argument batch_size"):
        TracInArgs.from_dict({"batch_size": 2.5})
    with pytest.raises(ValueError, match="tracin: batch_size must be >= 1"):
        TracInArgs.from_dict({"batch_size": 0})
    with pytest.raises(ValueError, match="datainf: argument damping"):
        DataInfArgs.from_dict({"damping": float("nan")})


def test_run_spec_refuses_arguments_for_unknown_methods():
    base = {"training_data": [{"id": "t", "question": "q", "answer": "a"}], "eval_data": [{"id": "e", "question": "q"}]}
    assert RunSpec.model_validate({**base, "influence_args": {"ekfac": {"damping_factor": 0.1}}})
    with pytest.raises(ValueError, match="unknown method"):
        RunSpec.model_validate({**base, "influence_args": {"lissa": {}}})


def _request(method="datainf", training=True, evals=True, checkpoints=True, args=None):
    run_id = uuid.uuid4()
    return InfluenceJobRequest.model_validate({
        "run_id": str(run_id),
        "method": method,
        "spec": {
            "training_data": [{"id": "t", "question": "q", "answer": "a"}] if training else [],
            "eval_data": [{"id": "e", "question": "q"}] if evals else [],
            "influence_args": args or {},
        },
        "checkpoints": [{"step": 4, "epoch": 1, "key": f"runs/{run_id}/checkpoints/4", "learning_rate": 1e-3}]
        if checkpoints else [],
    })


def test_request_problems_name_the_cause():
    assert request_problem(_request()) is None
    assert "unknown influence method 'lissa'" in request_problem(_request("lissa"))
    assert request_problem(_request(training=False)) == "checking the request: it has no training pairs"
    assert "no evaluation questions and no checkpoints" in request_problem(_request(evals=False, checkpoints=False))
    problem = request_problem(_request(args={"datainf": {"top_k": 0}}))
    assert problem.startswith("checking the arguments") and "top_k" in problem
    assert "damping must be > 0" in request_problem(_request(args={"datainf": {"damping": 0}}))
