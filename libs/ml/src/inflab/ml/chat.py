"""How a training pair or an evaluation question becomes token ids.

The trainer, the inference service and the influence methods all go through here, so the
loss being minimised, the prompt the model answers and the gradients being compared see
exactly the same tokens.

A pair is rendered with the tokenizer's chat template (user = question, assistant =
answer). The prompt part (everything up to and including the opening of the assistant turn)
is tokenised on its own and masked out of the loss; the answer part (the answer text and the
end-of-turn token) carries the loss. Tokenising the two parts separately guarantees that the
prompt tokens are the very ones :func:`prompt_ids` gives the model at generation time, and
that the mask boundary never falls inside a token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Label value that the loss ignores (the convention of torch's cross_entropy and transformers).
IGNORE_INDEX = -100

#: For tokenizers without a chat template (base models): a plain, readable turn format that
#: ends each answer with the end-of-sequence token, so generation still knows where to stop.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'Question: ' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Answer: ' + message['content'] + eos_token + '\n' }}"
    "{% else %}{{ message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Answer:' }}{% endif %}"
)


@dataclass(frozen=True)
class EncodedExample:
    """One tokenised training pair (or evaluation question with its reference answer)."""

    input_ids: list[int]
    #: Same length as ``input_ids``; IGNORE_INDEX on prompt tokens.
    labels: list[int]
    #: True when the pair was cut to ``max_length`` (callers report it; it is never silent).
    truncated: bool

    @property
    def answer_tokens(self) -> int:
        """How many tokens carry the loss (0 if truncation cut the whole answer)."""
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    kwargs: dict[str, Any] = {}
    if not getattr(tokenizer, "chat_template", None):
        kwargs["chat_template"] = FALLBACK_TEMPLATE
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
    )


def _tokenize(tokenizer: Any, text: str) -> list[int]:
    # The template already writes every special token it wants (a BOS included, if the
    # model uses one), so the tokenizer must not add its own.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _messages(question: str, few_shot: Sequence[tuple[str, str]] = ()) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    for shot_question, shot_answer in few_shot:
        messages.append({"role": "user", "content": shot_question})
        messages.append({"role": "assistant", "content": shot_answer})
    messages.append({"role": "user", "content": question})
    return messages


def prompt_text(tokenizer: Any, question: str, few_shot: Sequence[tuple[str, str]] = ()) -> str:
    """The generation prompt as text: earlier (question, answer) turns as few-shot examples,
    then ``question``, then the opening of the assistant's turn."""
    return _render(tokenizer, _messages(question, few_shot), add_generation_prompt=True)


def prompt_ids(tokenizer: Any, question: str, few_shot: Sequence[tuple[str, str]] = ()) -> list[int]:
    """Token ids of the generation prompt (see :func:`prompt_text`)."""
    return _tokenize(tokenizer, prompt_text(tokenizer, question, few_shot))


def encode_pair(
    tokenizer: Any, question: str, answer: str, max_length: int, few_shot: Sequence[tuple[str, str]] = ()
) -> EncodedExample:
    """Tokenise a (question, answer) pair for training: loss on the answer and its
    end-of-turn token only. Sequences longer than ``max_length`` are cut from the right
    (the question stays whole; the end of the answer goes) and flagged ``truncated``.
    ``few_shot`` puts earlier turns before the question, as :func:`prompt_ids` does (the
    prompt part is then exactly the few-shot generation prompt)."""
    if max_length < 1:
        raise ValueError("max_length must be at least 1")
    messages = _messages(question, few_shot)
    prompt = _render(tokenizer, messages, add_generation_prompt=True)
    full = _render(tokenizer, messages + [{"role": "assistant", "content": answer}], add_generation_prompt=False)

    prompt_tokens = _tokenize(tokenizer, prompt)
    if full.startswith(prompt):
        # The usual case. Trailing whitespace after the end-of-turn token (ChatML's "\n") is
        # template layout, not something the model has to produce, so it is not trained on.
        answer_tokens = _tokenize(tokenizer, full[len(prompt) :].rstrip())
        input_ids = prompt_tokens + answer_tokens
        labels = [IGNORE_INDEX] * len(prompt_tokens) + answer_tokens
    else:
        # Some templates render the conversation differently once it has an answer (e.g. they
        # drop the generation header). Then mask the longest shared token prefix instead.
        input_ids = _tokenize(tokenizer, full.rstrip())
        shared = 0
        for a, b in zip(prompt_tokens, input_ids):
            if a != b:
                break
            shared += 1
        labels = [IGNORE_INDEX] * shared + input_ids[shared:]

    truncated = len(input_ids) > max_length
    if truncated:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return EncodedExample(input_ids=input_ids, labels=labels, truncated=truncated)


def encode_document(tokenizer: Any, text: str, max_length: int) -> EncodedExample:
    """A benchmark document for causal-LM training: its tokens then end-of-sequence, the
    loss on every token (cut from the right to ``max_length``)."""
    ids = _tokenize(tokenizer, text)
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        ids = [tokenizer.bos_token_id] + ids
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    truncated = len(ids) > max_length
    ids = ids[:max_length]
    return EncodedExample(input_ids=ids, labels=list(ids), truncated=truncated)


def plain_prompt_ids(tokenizer: Any, question: str) -> list[int]:
    """A benchmark query's prompt: its plain text (no chat template)."""
    return _tokenize(tokenizer, question)


def query_prompt_ids(tokenizer: Any, question: str, answer: str | None) -> list[int]:
    """What a benchmark query's answer is generated from: the prompt :func:`encode_query`
    scores the answer after (the question and, for a digit-splitting tokenizer, the space
    before the value), so the shown answer is the one the correctness check judged. A query
    without an expected answer is asked as its plain text."""
    if not answer or not answer.strip():
        return plain_prompt_ids(tokenizer, question)
    example = encode_query(tokenizer, question, answer, 10**9)
    return [t for t, label in zip(example.input_ids, example.labels) if label == IGNORE_INDEX]


def encode_query(tokenizer: Any, question: str, answer: str, max_length: int) -> EncodedExample:
    """A benchmark query as plain text (no chat template, as the documents were read):
    the question, then ``" " + answer``, the answer's own tokens carrying the loss.

    Tokenizers that split digits (SmolLM2's) write ``" 51"`` as a lone space token then
    ``5``, ``1``, as the documents state a value (``returns 51``). That space token is
    layout, not the value: the documents never follow a question mark with it, so asking
    for it as the first answer token made every query "wrong" whatever the model knew
    about the value (its top token after ``?`` is the end of the document). Leading
    whitespace-only tokens therefore stay in the input but join the prompt: the loss, the
    correctness check and the gradients are about the value's tokens."""
    prompt = plain_prompt_ids(tokenizer, question)
    answer_ids = _tokenize(tokenizer, " " + answer.strip())
    lead = 0
    while lead < len(answer_ids) - 1 and not tokenizer.decode(answer_ids[: lead + 1]).strip():
        lead += 1
    prompt, answer_ids = prompt + answer_ids[:lead], answer_ids[lead:]
    ids, labels = prompt + answer_ids, [IGNORE_INDEX] * len(prompt) + answer_ids
    truncated = len(ids) > max_length
    return EncodedExample(input_ids=ids[:max_length], labels=labels[:max_length], truncated=truncated)


def collate(examples: Sequence[EncodedExample], pad_id: int) -> dict[str, "torch.Tensor"]:
    """Right-pad a batch for training: ``input_ids``, ``attention_mask`` (1 on real tokens)
    and ``labels`` (IGNORE_INDEX on padding), each of shape (batch, longest)."""
    import torch

    if not examples:
        raise ValueError("collate needs at least one example")
    longest = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(example.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def answer_loss(model: Any, batch: dict[str, "torch.Tensor"], *, per_example: bool = False) -> "torch.Tensor":
    """Cross-entropy on the answer tokens of a collated batch, computing vocabulary logits
    only at the positions that carry a label.

    Full (batch x length x vocabulary) logits dominate memory and time for a 49k-token
    vocabulary; here the decoder's hidden states are taken and the output layer
    is applied to the few positions that predict an answer token. Labels follow the
    transformers convention (aligned with ``input_ids``; position t-1 predicts token t),
    so this equals ``model(**batch).loss`` without the waste. Works on PEFT-wrapped models
    (the LoRA layers live inside the decoder).

    Returns the mean over all answer tokens of the batch, or with ``per_example`` a
    (batch,) tensor of each example's mean (0 for an example without answer tokens).
    """
    import torch
    import torch.nn.functional as F

    labels = batch["labels"]
    decoder = model.get_decoder()
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    token_losses = F.cross_entropy(logits.float(), targets[keep], reduction="none")
    if not per_example:
        # An all-masked batch (every answer truncated away) contributes a zero loss that
        # still has a graph, so a training step never crashes on it.
        return token_losses.sum() / keep.sum().clamp(min=1)
    rows = keep.nonzero(as_tuple=True)[0]
    sums = torch.zeros(labels.shape[0], dtype=token_losses.dtype, device=token_losses.device)
    sums = sums.index_add(0, rows, token_losses)
    return sums / keep.sum(dim=1).clamp(min=1)
