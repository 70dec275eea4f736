"""Method arguments from a run's ``influence_args``: one contract (libs/core) that the
gateway validates with, ``GET /api/methods`` is generated from and the influence service
parses with; a bad value is refused by name before any work, and a request that cannot
run is described without touching Ray."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from inflab.core import influence_methods as contract
from inflab.core.influence_methods import DataInfArgs, EKFACArgs, InfluenceArgs, TracInArgs
from inflab.core.messages import INFLUENCE_METHODS, RunSpec
from inflab.gateway.routes.methods import method_arguments, method_catalogue
from inflab.influence.job import method_arguments as job_arguments
from inflab.influence.methods import METHODS
from inflab.influence.service import InfluenceJobRequest, request_problem

BASE = {"training_data": [{"id": "t", "question": "q", "answer": "a"}], "eval_data": [{"id": "e", "question": "q"}]}


def test_every_method_has_one_argument_model_used_everywhere():
    assert list(contract.METHODS) == list(contract.ARGS_MODELS) == list(INFLUENCE_METHODS) == list(METHODS)
    for name, cls in METHODS.items():
        # The service's model is the contract's plus the run's token limits, nothing else.
        assert issubclass(cls.Args, contract.ARGS_MODELS[name])
        assert set(cls.Args.model_fields) - set(contract.ARGS_MODELS[name].model_fields) == {"max_length", "max_new_tokens", "benchmark"}
        assert [v.id for v in contract.METHODS[name].variants] == list(cls.variants)
        assert cls.description == contract.METHODS[name].description


def test_defaults_and_values_are_typed():
    assert DataInfArgs().damping is None and DataInfArgs(damping=0.5).damping == 0.5
    assert EKFACArgs.model_validate({"strategy": "kfac"}).strategy == "kfac"
    assert TracInArgs().top_k == contract.DEFAULT_TOP_K == 5
    assert InfluenceArgs().model_dump()["ekfac"]["damping_factor"] == 1e-8


@pytest.mark.parametrize(
    ("method", "args", "where", "message"),
    [
        ("ekfac", {"strategy": "newton"}, "strategy", "Input should be 'ekfac', 'kfac', 'diagonal' or 'identity'"),
        ("tracin", {"batch_size": 2.5}, "batch_size", "Input should be a valid integer, got a number with a fractional part"),
        ("tracin", {"batch_size": 0}, "batch_size", "Input should be greater than or equal to 1"),
        ("datainf", {"damping": float("nan")}, "damping", "Input should be a finite number"),
        ("datainf", {"damping": 0}, "damping", "Input should be greater than 0"),
        ("datainf", {"dampnig": 0.1}, "dampnig", "Extra inputs are not permitted"),
        ("tracin", {"top_k": 0}, "top_k", "Input should be greater than or equal to 1"),
    ],
)
def test_a_bad_value_is_refused_naming_the_argument(method, args, where, message):
    with pytest.raises(ValidationError) as caught:
        RunSpec.model_validate({**BASE, "influence_args": {method: args}})
    errors = caught.value.errors()
    assert [e["loc"] for e in errors] == [("influence_args", method, where)]
    assert errors[0]["msg"] == message


def test_run_spec_refuses_arguments_for_unknown_methods():
    assert RunSpec.model_validate({**BASE, "influence_args": {"ekfac": {"damping_factor": 0.1}}})
    with pytest.raises(ValidationError, match=r"unknown influence method\(s\) \['lissa'\]"):
        RunSpec.model_validate({**BASE, "influence_args": {"lissa": {}}})


def test_the_catalogue_is_generated_from_the_models():
    catalogue = {m.id: m for m in method_catalogue()}
    assert [(m.id, m.label, m.speed) for m in catalogue.values()] == [
        ("tracin", "TracIn", "fast"), ("datainf", "DataInf", "balanced"), ("ekfac", "EK-FAC", "precise"),
        ("delta_h", "Concept change (Δh)", "fast"), ("act_grad", "Activation gradients", "fast"),
        ("attr_change", "Attribution-weighted change", "balanced"), ("patching", "Causal patching", "precise"),
        ("embedding", "Embedding cosine (baseline)", "fast")]
    for method in catalogue.values():
        names = [a.name for a in method.args]
        # The ablation grid is the CLI's (inflab bench run --grid), not a form field.
        assert names == [n for n in contract.ARGS_MODELS[method.id].model_fields if n != "grid"]
        assert names[:2] == ["top_k", "batch_size"] and all(a.shared for a in method.args[:2])
        assert all(a.description for a in method.args), method.id
        representation = method.id in (*contract.REPRESENTATION_METHODS, "embedding")
        assert [v.id for v in method.variants] == (["raw"] if representation else ["raw", "normalized"])
    # Final-checkpoint methods say what they miss; TracIn says what it keeps.
    assert "memorised" in catalogue["tracin"].description
    assert all("memorised" in catalogue[m].description for m in ("datainf", "ekfac"))

    damping = {a.name: a for a in method_arguments(DataInfArgs)}["damping"]
    assert (damping.type, damping.nullable, damping.default, damping.exclusive_minimum) == ("number", True, None, 0)
    strategy = {a.name: a for a in method_arguments(EKFACArgs)}["strategy"]
    assert strategy.type == "string" and strategy.choices == ["ekfac", "kfac", "diagonal", "identity"]
    top_k = {a.name: a for a in method_arguments(TracInArgs)}["top_k"]
    assert (top_k.type, top_k.default, top_k.minimum, top_k.maximum, top_k.advanced) == ("integer", 5, 1, 1000, False)


def _request(method="datainf", training=True, evals=True, checkpoints=True, args=None):
    run_id = uuid.uuid4()
    return InfluenceJobRequest.model_validate({
        "run_id": str(run_id),
        "method": method,
        "spec": {
            "training_data": [{"id": "t", "question": "q", "answer": "a"}] if training else [],
            "eval_data": [{"id": "e", "question": "q"}] if evals else [],
            "influence_args": args or {},
            "hyperparams": {"max_seq_length": 64},
        },
        "checkpoints": [{"step": 4, "epoch": 1, "key": f"runs/{run_id}/checkpoints/4", "learning_rate": 1e-3}]
        if checkpoints else [],
    })


def test_the_service_parses_with_the_contract_and_adds_the_run_limits():
    args, top_k = job_arguments(_request(args={"datainf": {"damping": 0.5, "top_k": 3}}))
    assert top_k == 3
    assert args == {**DataInfArgs(damping=0.5, top_k=3).model_dump(), "max_length": 64, "max_new_tokens": 48,
                    "benchmark": False}
    assert METHODS["datainf"].Args.model_validate(args).damping == 0.5


def test_request_problems_name_the_cause():
    assert request_problem(_request()) is None
    assert "unknown influence method 'lissa'" in request_problem(_request("lissa"))
    assert request_problem(_request(training=False)) == "checking the request: it has no training pairs"
    assert "no evaluation questions and no checkpoints" in request_problem(_request(evals=False, checkpoints=False))
    # A bad argument reaches the service (not a dead letter) and fails the stage by name.
    problem = request_problem(_request(args={"datainf": {"top_k": 0}}))
    assert problem == ("checking the arguments: ValueError: datainf.top_k: Input should be greater than or equal to 1")
    assert "datainf.damping: Input should be greater than 0" in request_problem(_request(args={"datainf": {"damping": 0}}))
