"""Rows sent without an id are numbered by position, around the ids other rows carry."""

from inflab.gateway.schemas import ExperimentCreate


def test_rows_without_ids_are_numbered_around_the_given_ones():
    body = ExperimentCreate.model_validate({
        "name": "mixed",
        "training_data": [
            {"question": "typed 1", "answer": "a"},
            {"question": "typed 2", "answer": "a"},
            {"id": "tr00", "question": "imported 1", "answer": "a"},
            {"id": "tr01", "question": "imported 2", "answer": "a"},
            {"question": "typed 3", "answer": "a"},
        ],
        "eval_data": [{"question": "q"}],
    })
    assert [p.id for p in body.training_data] == ["tr02", "tr03", "tr00", "tr01", "tr04"]
    assert [q.id for q in body.eval_data] == ["ev00"]


def test_positional_ids_without_collisions_are_unchanged():
    body = ExperimentCreate.model_validate({
        "name": "plain",
        "training_data": [{"question": f"q{i}", "answer": "a"} for i in range(3)],
        "eval_data": [{"question": "q"}],
    })
    assert [p.id for p in body.training_data] == ["tr00", "tr01", "tr02"]
