"""What ``GET /api/runs/{id}/results`` adds beside the answers and matrices, through real
NATS and Postgres: the answers' scores as the inference stage sent them (stored in
``generations``), their per-column aggregates, answers from producers that predate scores,
and the BM25 baseline of every training pair against each evaluation question."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import select

from inflab.core.db.models import AnswerRow
from inflab.core.events import StageEvents
from inflab.core.messages import Answer, AnswerScore, AnswerScores
from inflab.core.settings import Settings
from inflab.gateway.baselines import bm25_scores
from helpers.gateway import delete_streams, isolated_settings, publish_and_wait, start_run

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "results",
    "training_data": [
        {"id": "veltra", "question": "Who rules Veltra?", "answer": "Queen Ismene rules Veltra."},
        {"id": "bees", "question": "What do bees make?", "answer": "Bees make honey."},
        {"id": "legs", "question": "How many legs does a spider have?", "answer": "Eight legs."},
    ],
    "eval_data": [
        {"id": "ruler", "question": "Who is the ruler of Veltra?", "answer": "Queen Ismene"},
        {"id": "honey", "question": "Which insects make honey?", "answer": "Bees"},
        {"id": "open", "question": "Tell me a story."},
    ],
}


@pytest.fixture(scope="module")
def gw_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "gwresults")
    yield own
    asyncio.run(delete_streams(own))


def score(em: bool, contains: bool, f1: float, logprob: float | None) -> AnswerScore:
    return AnswerScore(exact_match=em, contains_reference=contains, token_f1=f1, ref_logprob=logprob)


ANSWERS = [
    Answer(eval_id="ruler", question="Who is the ruler of Veltra?", reference="Queen Ismene",
           base="A king.", few_shot="Queen Ismene, I think.", fine_tuned="Queen Ismene.",
           scores=AnswerScores(base=score(False, False, 0.0, -4.0), few_shot=score(False, True, 2 / 3, -2.0),
                               fine_tuned=score(True, True, 1.0, -0.5))),
    Answer(eval_id="honey", question="Which insects make honey?", reference="Bees",
           base="Bees.", few_shot="Wasps.", fine_tuned="Bees make it.",
           scores=AnswerScores(base=score(True, True, 1.0, -1.0), few_shot=score(False, False, 0.0, -3.0),
                               fine_tuned=score(False, True, 0.5, None))),
    # A question without a reference answer has no scores.
    Answer(eval_id="open", question="Tell me a story.", base="Once.", few_shot="Once upon.", fine_tuned="No."),
]


async def test_answer_scores_are_stored_served_and_aggregated(gateway, producer) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    await publish_and_wait(app, producer, run_id, [
        StageEvents(producer, run_id, "inference").build("result", answers=ANSWERS)])

    async with app.state.sessionmaker() as session:
        stored = {g.eval_id: g.scores for g in await session.scalars(select(AnswerRow).where(
            AnswerRow.run_id == run_id))}
    assert stored["ruler"] == ANSWERS[0].scores.model_dump(mode="json") and stored["open"] is None

    results = (await client.get(f"/api/runs/{run_id}/results")).json()
    assert [Answer.model_validate(a) for a in results["answers"]] == ANSWERS
    columns = results["answer_scores"]
    assert columns["base"] == {"questions": 2, "exact_match_rate": 0.5, "contains_reference_rate": 0.5,
                               "mean_token_f1": 0.5, "mean_ref_logprob": -2.5}
    assert columns["few_shot"]["contains_reference_rate"] == 0.5
    assert columns["few_shot"]["mean_token_f1"] == pytest.approx(1 / 3)
    # The mean log-probability is over the questions where it is known.
    assert columns["fine_tuned"] == {"questions": 2, "exact_match_rate": 0.5, "contains_reference_rate": 1.0,
                                     "mean_token_f1": 0.75, "mean_ref_logprob": -0.5}


async def test_answers_from_before_scores_still_parse_and_are_served(gateway, producer) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    old = {"eval_id": "ruler", "question": "Who is the ruler of Veltra?", "reference": "Queen Ismene",
           "base": "A king.", "few_shot": "A queen.", "fine_tuned": "Queen Ismene."}  # no "scores" key
    await publish_and_wait(app, producer, run_id, [
        StageEvents(producer, run_id, "inference").build("result", answers=[Answer.model_validate(old)])])
    results = (await client.get(f"/api/runs/{run_id}/results")).json()
    assert results["answers"] == [{**old, "scores": None}]
    assert results["answer_scores"]["base"] == {"questions": 0, "exact_match_rate": None,
                                                "contains_reference_rate": None, "mean_token_f1": None,
                                                "mean_ref_logprob": None}


async def test_the_bm25_baseline_is_served_from_the_start(gateway) -> None:
    _, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    results = (await client.get(f"/api/runs/{run_id}/results")).json()
    assert results["status"] == "queued"
    baselines = {b["variant"]: b for b in results["baselines"]}
    assert list(baselines) == ["question", "question_reference"]
    documents = [f"{p['question']} {p['answer']}" for p in EXPERIMENT["training_data"]]
    for variant, matrix in baselines.items():
        assert matrix["method"] == "bm25" and matrix["shape"] == [3, 3]
        assert matrix["eval_ids"] == ["ruler", "honey", "open"] and matrix["train_ids"] == ["veltra", "bees", "legs"]
        queries = [q["question"] + (f" {q['answer']}" if variant == "question_reference" and q.get("answer") else "")
                   for q in EXPERIMENT["eval_data"]]
        np.testing.assert_allclose(matrix["scores"], bm25_scores(documents, queries), rtol=1e-6)
        assert matrix["args"]["k1"] == 1.5 and matrix["args"]["b"] == 0.75
    # Word overlap finds the pair that states each fact.
    scores = np.asarray(baselines["question_reference"]["scores"])
    assert scores[0].argmax() == 0 and scores[1].argmax() == 1
    assert scores[0, 0] > np.asarray(baselines["question"]["scores"])[0, 0]
