"""The representation methods (delta_h, act_grad, attr_change, patching) against brute-force
references on a tiny random Llama, with every jaxtyping shape annotation checked at run time.

The run is faked: one "checkpoint" is a LoRA adapter with seeded random weights (so the
base and the fine-tuned model differ). The references are deliberately naive: one
example at a time, no padding, the model's own ``output_hidden_states`` and full-logit
``.loss``, explicit loops over layers, pooling written out, cosines one pair at a time.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.tiny_lora import EVALS, MAX_LENGTH, encode_examples, random_checkpoint, training_pairs
from helpers.tiny_lora import tiny_model  # noqa: F401  (a fixture)
from helpers.tiny_model import build_tiny_model
from helpers.tiny_lora import load as _load
from inflab.ml.chat import IGNORE_INDEX, collate
from inflab.influence.checkpoints import LocalCheckpoint
from inflab.influence.gradcache import GradientCache
from inflab.influence.methods import get_method
from inflab.influence.methods.representation import (
    aggregate_layers,
    check_compatible,
    fit_layer_weights,
    layer_similarities,
    normalize_layers,
    parse_layers,
)
from inflab.influence.methods.shapes import enable_shape_checks

TRAIN = training_pairs("france", "spider", "report", "sky", "count")
# batch_size 2: several buckets of different padding.
ARGS = {"batch_size": 2, "max_length": MAX_LENGTH, "max_new_tokens": 4}


@pytest.fixture(autouse=True, scope="module")
def checks_and_one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    enable_shape_checks(True)
    yield
    enable_shape_checks(False)
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tiny_model: Path, tmp_path_factory) -> LocalCheckpoint:
    return random_checkpoint(tiny_model, tmp_path_factory.mktemp("checkpoint") / "10", 7,
                             {"step": 10, "epoch": 1, "loss": 1.0, "learning_rate": 1e-3},
                             target_modules=("q_proj", "v_proj", "o_proj"))


def _run(tiny_model, checkpoint, method, **extra):
    events: list = []
    [scores] = get_method(method).compute(lambda: _load(tiny_model), TRAIN, EVALS, [checkpoint], {**ARGS, **extra},
                                          events.append)
    return scores, events


# ----------------------------------------------------------------------------- reference
def _peft(tiny_model, checkpoint):
    from peft import PeftModel

    base, tokenizer = _load(tiny_model)
    model = PeftModel.from_pretrained(base, str(checkpoint.path))
    model.eval()
    return model, tokenizer


def _encode(tokenizer, generated):
    return encode_examples(tokenizer, TRAIN, EVALS, generated)


def _layer_outputs(model, example, *, grad: bool, replace: dict | None = None):
    """Per layer l: h_l [T, d] (the output of decoder layer l), and with ``grad`` the
    gradient of the example's loss (HF's own full-logit ``.loss``) with respect to it."""
    layers = model.get_decoder().layers
    outputs: dict[int, torch.Tensor] = {}
    handles = []
    for index, layer in enumerate(layers):
        def hook(module, args, output, index=index):
            h = output[0] if isinstance(output, tuple) else output
            if replace and index in replace:
                h = replace[index]
                output = (h, *output[1:]) if isinstance(output, tuple) else h
            outputs[index] = h
            return output
        handles.append(layer.register_forward_hook(hook))
    batch = collate([example], 0)
    try:
        with torch.enable_grad():
            embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
            loss = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
            grads = torch.autograd.grad(loss, [outputs[i] for i in range(len(layers))], allow_unused=True) if grad else None
    finally:
        for handle in handles:
            handle.remove()
    states = [outputs[i][0].detach().double() for i in range(len(layers))]
    if grads is None:
        return states, None
    return states, [torch.zeros_like(s) if g is None else g[0].double() for s, g in zip(states, grads)]


def _pool(h, example, pooling):
    span = [t for t, label in enumerate(example.labels) if label != IGNORE_INDEX]
    if pooling == "last":
        # The position predicting the last labelled token (the last one has no gradient).
        return h[span[-1] - 1] if span and span[-1] > 0 else h[-1]
    return h[span].mean(0) if span else h[-1]


def _cos(a, b):
    na, nb = float(a.norm()), float(b.norm())
    return 0.0 if na == 0 or nb == 0 else float(a @ b) / (na * nb)


def _reference_vectors(tiny_model, checkpoint, examples, kind, pooling, ig_steps=0):
    """[example][layer] -> pooled vector, one example and one layer at a time."""
    model, _ = _peft(tiny_model, checkpoint)
    out = []
    for example in examples:
        with model.disable_adapter():
            old, _ = _layer_outputs(model, example, grad=False)
        new, grads = _layer_outputs(model, example, grad=True)
        per_layer = []
        for layer in range(len(new)):
            delta = _pool(new[layer] - old[layer], example, pooling)
            if kind == "delta":
                per_layer.append(delta)
                continue
            g = grads[layer]
            if kind == "attr" and ig_steps:
                g = torch.zeros_like(g)
                for k in range(ig_steps):
                    point = (old[layer] + (k + 0.5) / ig_steps * (new[layer] - old[layer])).float()[None]
                    point.requires_grad_(True)
                    _, gk = _layer_outputs(model, example, grad=True, replace={layer: point})
                    g += gk[layer] / ig_steps
            pooled_g = _pool(g, example, pooling)
            per_layer.append(pooled_g if kind == "grad" else delta * pooled_g)
        out.append(per_layer)
    return out


def _reference_scores(q_vectors, t_vectors, layers, similarity="cosine", aggregation="mean"):
    m, n = len(q_vectors), len(t_vectors)
    scores = np.zeros((m, n))
    for i in range(m):
        for j in range(n):
            per_layer = []
            for layer in layers:
                a, b = q_vectors[i][layer], t_vectors[j][layer]
                per_layer.append(_cos(a, b) if similarity == "cosine" else float(a @ b))
            scores[i, j] = np.mean(per_layer) if aggregation == "mean" else np.mean(sorted(per_layer)[-1:])
    return scores


@pytest.mark.parametrize("method,kind,pooling", [
    ("delta_h", "delta", "answer_mean"),
    ("delta_h", "delta", "last"),
    ("act_grad", "grad", "answer_mean"),
    ("attr_change", "attr", "last"),
])
def test_method_equals_brute_force_reference(tiny_model, checkpoint, method, kind, pooling):
    scores, events = _run(tiny_model, checkpoint, method, pooling=pooling)
    _, tokenizer = _load(tiny_model)
    train, evals = _encode(tokenizer, scores.args["generated_answers"])
    q = _reference_vectors(tiny_model, checkpoint, evals, kind, pooling)
    t = _reference_vectors(tiny_model, checkpoint, train, kind, pooling)
    assert all(float(v.norm()) > 0 for row in t for v in row), "the fake adapter must change every example"
    want = _reference_scores(q, t, range(2))
    np.testing.assert_allclose(scores.scores, want, atol=1e-5)
    assert scores.args["pooling"] == pooling and scores.args["layers"] == "all"
    assert scores.eval_ids == [e.id for e in EVALS] and scores.train_ids == [p.id for p in TRAIN]
    assert events and events[-1].fraction == 1.0


def test_options_dot_top_layer_and_subset(tiny_model, checkpoint):
    scores, _ = _run(tiny_model, checkpoint, "delta_h", similarity="dot", aggregation="topk_mean", top_layers=1,
                     layers="1")
    _, tokenizer = _load(tiny_model)
    train, evals = _encode(tokenizer, scores.args["generated_answers"])
    q = _reference_vectors(tiny_model, checkpoint, evals, "delta", "answer_mean")
    t = _reference_vectors(tiny_model, checkpoint, train, "delta", "answer_mean")
    want = _reference_scores(q, t, [1], similarity="dot", aggregation="top1")
    np.testing.assert_allclose(scores.scores, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_integrated_gradients_equals_reference(tiny_model, checkpoint):
    scores, _ = _run(tiny_model, checkpoint, "attr_change", ig_steps=3, pooling="answer_mean")
    _, tokenizer = _load(tiny_model)
    train, evals = _encode(tokenizer, scores.args["generated_answers"])
    q = _reference_vectors(tiny_model, checkpoint, evals, "attr", "answer_mean", ig_steps=3)
    t = _reference_vectors(tiny_model, checkpoint, train, "attr", "answer_mean", ig_steps=3)
    np.testing.assert_allclose(scores.scores, _reference_scores(q, t, range(2)), atol=1e-5)


def test_cached_features_serve_a_second_method_and_a_layer_subset(tiny_model, checkpoint):
    cache = GradientCache()
    events: list = []
    first = get_method("delta_h").compute(lambda: _load(tiny_model), TRAIN, EVALS, [checkpoint], ARGS,
                                          events.append, cache=cache)[0]
    misses = cache.misses
    second = get_method("delta_h").compute(lambda: _load(tiny_model), TRAIN, EVALS, [checkpoint],
                                           {**ARGS, "layers": "0", "normalization": "zscore"}, events.append,
                                           cache=cache)[0]
    assert cache.misses == misses, "the layer subset must come from the cached features"
    assert not np.allclose(first.scores, second.scores)


@pytest.mark.slow
def test_patching_equals_reference(tiny_model, checkpoint):
    fraction = 0.25
    scores, _ = _run(tiny_model, checkpoint, "patching", patch_layer=0, patch_fraction=fraction, pooling="last")
    model, tokenizer = _peft(tiny_model, checkpoint)
    train, evals = _encode(tokenizer, scores.args["generated_answers"])
    attributions = _reference_vectors(tiny_model, checkpoint, train, "attr", "last")

    def margin(logits, answer):
        others = logits.clone()
        others[answer] = -math.inf
        return float(logits[answer] - others.max())

    def run(example_ids, replace=None):
        layer0 = model.get_decoder().layers[0]
        handle = None
        if replace is not None:
            def hook(module, args, output):
                h = (output[0] if isinstance(output, tuple) else output).clone()
                h[0, -1] = replace(h[0, -1])
                return (h, *output[1:]) if isinstance(output, tuple) else h
            handle = layer0.register_forward_hook(hook)
        try:
            with torch.no_grad():
                out = model(input_ids=torch.tensor([example_ids]), output_hidden_states=True)
        finally:
            if handle is not None:
                handle.remove()
        return out.logits[0, -1], out.hidden_states[1][0, -1]

    want = np.zeros((len(evals), len(train)))
    for i, example in enumerate(evals):
        first = next(t for t, label in enumerate(example.labels) if label != IGNORE_INDEX)
        prefix, answer = example.input_ids[:first], example.input_ids[first]
        logits_new, h_new = run(prefix)
        with model.disable_adapter():
            logits_old, _ = run(prefix)
            sign = 1.0 if margin(logits_new, answer) - margin(logits_old, answer) >= 0 else -1.0
            for j in range(len(train)):
                a = attributions[j][0].abs()
                k = math.ceil(fraction * a.shape[0])
                dims = torch.topk(a, k).indices
                patched, _ = run(prefix, replace=lambda h: h.index_copy(0, dims, h_new[dims]))
                want[i, j] = sign * (margin(patched, answer) - margin(logits_old, answer))
    np.testing.assert_allclose(scores.scores, want, atol=1e-5)
    assert np.abs(want).max() > 0


# ----------------------------------------------------------------------------- pieces
def test_parse_layers():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("0,2-3", 4) == [0, 2, 3]
    with pytest.raises(ValueError, match=r"\[5\] outside"):
        parse_layers("1,5", 4)


def test_layer_maths_by_hand():
    q = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # 1 query, 2 layers, d 2
    t = torch.tensor([[[1.0, 1.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]]])
    cos = layer_similarities(q, t, "cosine")
    np.testing.assert_allclose(cos[0].numpy(), [[1 / math.sqrt(2), 1.0], [0.0, 0.0]], atol=1e-7)
    np.testing.assert_allclose(layer_similarities(q, t, "dot")[0].numpy(), [[1.0, 2.0], [0.0, 0.0]])
    z = normalize_layers(cos, "zscore")
    np.testing.assert_allclose(z[0].numpy(), [[1.0, 1.0], [-1.0, -1.0]], atol=1e-6)
    np.testing.assert_allclose(aggregate_layers(cos, "topk_mean", top_layers=1)[0].numpy(), [1.0, 0.0])
    w = fit_layer_weights(torch.tensor([[[0.9, 0.1], [0.1, 0.9]]]), torch.tensor([[True, False]]))
    np.testing.assert_allclose(w.numpy(), [1.0, 0.0])
    np.testing.assert_allclose(aggregate_layers(cos, "learned", weights=w)[0].numpy(), [1 / math.sqrt(2), 0.0],
                               atol=1e-7)


def test_shape_checks_catch_a_wrong_shape():
    with pytest.raises(Exception, match="(?i)type|shape|dimension"):
        layer_similarities(torch.zeros(2, 3, 4), torch.zeros(5, 2, 4), "cosine")


def test_mismatched_checkpoints_are_refused(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    a_path = build_tiny_model(tmp_path / "a", seed=0)
    model_a, tok_a = _load(a_path)
    model_b, tok_b = _load(build_tiny_model(tmp_path / "b", seed=1))
    check_compatible(model_a, tok_a, model_b, tok_b)  # same architecture and tokenizer: fine
    wider = LlamaForCausalLM(LlamaConfig(**{**model_a.config.to_dict(), "hidden_size": 32, "head_dim": 8}))
    with pytest.raises(ValueError, match="hidden_size differs"):
        check_compatible(model_a, tok_a, wider, tok_b)
    tok_b.add_special_tokens({"additional_special_tokens": ["<FN>"]})
    with pytest.raises(ValueError, match="tokenizers differ"):
        check_compatible(model_a, tok_a, model_b, tok_b)


def test_two_named_checkpoints(tmp_path, tiny_model, checkpoint):
    """old_model/new_model: two full checkpoints loaded by id; a mismatch is refused before
    any work (no progress event)."""
    other = build_tiny_model(tmp_path / "other", seed=3)
    folders = {"old": tiny_model, "new": other}
    events: list = []
    [scores] = get_method("delta_h").compute(
        lambda: _load(tiny_model), TRAIN, EVALS, [], {**ARGS, "old_model": "old", "new_model": "new"}, events.append,
        named_loader=lambda name: _load(folders[name]),
    )
    assert scores.args["models"] == "old old vs new new"
    assert np.isfinite(scores.scores).all() and np.abs(scores.scores).max() > 0

    from transformers import AutoTokenizer

    odd = tmp_path / "odd"
    build_tiny_model(odd, seed=4)
    tokenizer = AutoTokenizer.from_pretrained(odd)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<GN>"]})
    tokenizer.save_pretrained(odd)
    folders["new"] = odd
    events.clear()
    with pytest.raises(Exception, match="checking the two models: ValueError: .*tokenizers differ"):
        get_method("delta_h").compute(lambda: _load(tiny_model), TRAIN, EVALS, [],
                                      {**ARGS, "old_model": "old", "new_model": "new"}, events.append,
                                      named_loader=lambda name: _load(folders[name]))
    assert not [e for e in events if e.kind == "progress"]


def test_grid_scores_each_cell_from_one_feature_pass(tiny_model, checkpoint):
    cache = GradientCache()
    grid = [{"layers": "0"}, {"layers": "1", "similarity": "dot"}, {"normalization": "zscore"}]
    out = get_method("delta_h").compute(lambda: _load(tiny_model), TRAIN, EVALS, [checkpoint], {**ARGS, "grid": grid},
                                        lambda e: None, cache=cache)
    assert [s.variant for s in out] == ["raw", "grid1", "grid2", "grid3"]
    # e2's generated answer, then one feature pass for the questions and one for the examples.
    assert cache.misses == 3
    assert out[1].args["grid_cell"] == {"layers": "0"} and out[2].args["similarity"] == "dot"
    single = get_method("delta_h").compute(lambda: _load(tiny_model), TRAIN, EVALS, [checkpoint],
                                           {**ARGS, "layers": "1", "similarity": "dot"}, lambda e: None)[0]
    np.testing.assert_allclose(out[2].scores, single.scores, rtol=1e-6, atol=1e-7)
    with pytest.raises(Exception, match=r"grid.0: \['ig_steps'\] cannot vary"):
        get_method("attr_change").Args.model_validate({**ARGS, "grid": [{"ig_steps": 2}]})
