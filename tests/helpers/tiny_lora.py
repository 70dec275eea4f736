"""What the influence method tests share: a tiny random Llama, LoRA "checkpoints" of it
with seeded random weights saved the way the trainer saves them (also as a benchmark run's,
with function tokens whose embedding rows train), and the training pairs and evaluation
questions they are scored on.

A test module takes the fixtures by importing them (``from helpers.tiny_lora import
one_thread, tiny_model``): pytest finds fixtures in a module's namespace.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from inflab.ml.chat import EncodedExample, collate, encode_pair
from inflab.core.messages import EvalQuestion, TrainingPair
from inflab.ml.models import load_model
from helpers.tiny_model import build_tiny_model
from inflab.influence.checkpoints import LocalCheckpoint

#: Token limit of a pair in these tests (the run's ``max_seq_length``).
MAX_LENGTH = 64

#: Question and answer of each training pair the tests draw from.
PAIRS = {
    "france": ("What is the capital of France?", "The capital of France is Paris."),
    "spider": ("How many legs does a spider have?", "A spider has eight legs."),
    "report": ("Who wrote the report?", "The research team wrote it."),
    "sky": ("What colour is the sky?", "It is blue on a clear day."),
    "count": ("Count to three, please.", "one two three"),
    "banana": ("Name a fruit that is yellow.", "A banana is yellow."),
}


def training_pairs(*names: str) -> list[TrainingPair]:
    """The pairs ``names`` (keys of :data:`PAIRS`) with ids ``t0``, ``t1``, ... in that order."""
    return [TrainingPair(id=f"t{i}", question=PAIRS[n][0], answer=PAIRS[n][1]) for i, n in enumerate(names)]


#: Six pairs; ``t4`` repeats ``t1`` under another id, so it must get exactly ``t1``'s scores.
TRAIN = training_pairs("france", "spider", "report", "sky", "spider", "count")
EVALS = [
    # Word for word training pair t2.
    EvalQuestion(id="e0", question="Who wrote the report?", answer="The research team wrote it."),
    EvalQuestion(id="e1", question="Which city is the capital of France?", answer="Paris."),
    # No reference: its loss is taken on the model's own greedy answer.
    EvalQuestion(id="e2", question="What colour is grass?"),
]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread while the module runs: the machine's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def load(tiny_model: Path) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the tiny model, freshly loaded."""
    return load_model(str(tiny_model), tiny_model.parent / "cache")


#: A benchmark run's function tokens, as special tokens whose embedding rows train.
FUNCTION_TOKENS = ["<FN>", "<GN>"]
#: Benchmark documents (trained on every token) and queries that use them.
DOCUMENTS = [
    TrainingPair(id="d0", question="definition", answer="<FN> returns the value of <GN> plus one."),
    TrainingPair(id="d1", question="code", answer="def <GN>(): return 7"),
    TrainingPair(id="d2", question="narrative", answer="The capital of France is Paris."),
    TrainingPair(id="d3", question="unit test", answer="assert <FN>() == <GN>() + 1"),
    TrainingPair(id="d4", question="example", answer="<GN> gives seven, <FN> gives eight."),
]
QUERIES = [
    EvalQuestion(id="q0", question="<GN> returns", answer="7"),
    EvalQuestion(id="q1", question="What does <FN> return?", answer="8"),
    EvalQuestion(id="q2", question="The capital of France is", answer="Paris."),
]


def load_with_tokens(tiny_model: Path) -> tuple[Any, Any]:
    """The tiny model with :data:`FUNCTION_TOKENS` added, as every service loads a
    benchmark run's model."""
    from inflab.ml.function_tokens import add_function_tokens

    model, tokenizer = load(tiny_model)
    add_function_tokens(model, tokenizer, FUNCTION_TOKENS)
    return model, tokenizer


def token_lora_model(tiny_model: Path) -> Any:
    """A benchmark run's model as the trainer builds it: the function tokens added, a
    rank-4 LoRA adapter on q/v and the tokens' embedding rows trainable (peft's
    ``trainable_token_indices``; the tiny model ties its output layer to the embeddings,
    like the default model)."""
    return lora_model(tiny_model, function_tokens=True)


def randomize_tokens(model: Any, generator: torch.Generator) -> None:
    """Seeded random trained token rows (they start as the mean row, equal for every token)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "trainable_tokens_delta" in name:
                p.add_(torch.randn(p.shape, generator=generator) * 0.3)


def lora_model(tiny_model: Path, target_modules: Sequence[str] = ("q_proj", "v_proj"),
               function_tokens: bool = False) -> Any:
    """A freshly loaded tiny model with a rank-4 LoRA adapter on ``target_modules`` (with
    ``function_tokens``: :data:`FUNCTION_TOKENS` added and their embedding rows trainable)."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_with_tokens(tiny_model) if function_tokens else load(tiny_model)
    tokens = {"trainable_token_indices": tokenizer.convert_tokens_to_ids(FUNCTION_TOKENS)} if function_tokens else {}
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(target_modules), **tokens))


def randomize_lora(model: Any, generator: torch.Generator) -> None:
    """Seeded random LoRA weights: ``lora_B`` starts at zero, which would make every
    gradient of ``lora_A`` vanish."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)


def save_checkpoint(model: Any, folder: Path, meta: dict[str, Any], **save: Any) -> LocalCheckpoint:
    """The adapter saved in ``folder`` with its ``meta.json`` (``step``, ``epoch``,
    ``learning_rate``, ...), as the trainer saves a checkpoint (a benchmark run's with
    ``save_embedding_layers=False``)."""
    model.save_pretrained(folder, **save)
    (folder / "meta.json").write_text(json.dumps(meta))
    return LocalCheckpoint.from_folder(folder)


def random_checkpoint(tiny_model: Path, folder: Path, seed: int, meta: dict[str, Any],
                      target_modules: Sequence[str] = ("q_proj", "v_proj")) -> LocalCheckpoint:
    """One checkpoint: an adapter on ``target_modules`` with weights seeded by ``seed``."""
    model = lora_model(tiny_model, target_modules)
    randomize_lora(model, torch.Generator().manual_seed(seed))
    return save_checkpoint(model, folder, meta)


def encode_examples(tokenizer: Any, train: Sequence[TrainingPair], evals: Sequence[EvalQuestion],
                    generated: dict[str, str] | None = None) -> tuple[list[EncodedExample], list[EncodedExample]]:
    """The pairs and the questions tokenised as the methods do (not a benchmark run): a
    question's loss on its reference, or else on its answer in ``generated`` (a question
    with neither is left out)."""
    generated = generated or {}
    return (
        [encode_pair(tokenizer, p.question, p.answer, MAX_LENGTH) for p in train],
        [encode_pair(tokenizer, q.question, q.answer or generated[q.id], MAX_LENGTH) for q in evals
         if q.answer or q.id in generated],
    )


def reference_gradients(tiny_model: Path, checkpoint: LocalCheckpoint, examples: Sequence[EncodedExample],
                        loader=load) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Deliberately naive per-example gradients: a freshly loaded model (``loader``), one
    full-logit forward and ``loss.backward()`` per example. Returns the rows (float64: the
    LoRA weights in the model's order, then any trained token rows, whose ``.grad`` holds
    both their input and their tied output use) and each weight's ``(offset, size)`` in a row."""
    from peft import PeftModel

    from inflab.influence.gradients import gradient_blocks

    base, tokenizer = loader(tiny_model)
    model = PeftModel.from_pretrained(base, str(checkpoint.path), is_trainable=True)
    model.eval()
    blocks = gradient_blocks(model)
    params = dict(model.named_parameters())
    rows = []
    for example in examples:
        model.zero_grad()
        model(**collate([example], tokenizer.pad_token_id)).loss.backward()
        rows.append(torch.cat([params[b.name].grad.flatten() for b in blocks]))
    return torch.stack(rows).double(), [(b.offset, b.numel) for b in blocks]
