"""Estimates before a run, without torch: parameter counts (config.json, known models, the
id's size), tiers, memory, duration and cost from the settings' tables."""

from __future__ import annotations

import json
import math

import pytest

from inflab.core.messages import Hyperparams, TrainingPair
from inflab.core.settings import ComputeTier, Settings
from inflab.gateway.estimates import (
    KNOWN_MODELS,
    UnknownModelSize,
    estimate,
    model_size,
    pair_tokens,
    tier_of,
)

PAIRS = [TrainingPair(id=f"tr{i:02d}", question="What colour is the sky on Veltra?",
                      answer="The sky on Veltra is green.") for i in range(32)]

# Tiny configurations with the parameter counts transformers gives their models
# (counted once with AutoModelForCausalLM.from_config on the meta device).
TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 1000,
              "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
              "tie_word_embeddings": True}
TINY_QWEN2 = {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 3, "vocab_size": 1000,
              "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2,
              "tie_word_embeddings": False}


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None)


@pytest.mark.parametrize(("config", "parameters"), [(TINY_LLAMA, 138_048), (TINY_QWEN2, 220_992)])
def test_a_models_folder_config_is_counted_like_transformers_counts_it(tmp_path, config, parameters) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    size = model_size("tiny", tmp_path)
    assert size.parameters == parameters
    assert "config.json" in size.source


def test_known_models_match_their_published_sizes() -> None:
    published = {"smollm2-135m": 134_515_008, "llama-3.1-8b": 8_030_261_248, "llama-3.1-70b": 70_553_706_496,
                 "mistral-7b": 7_241_732_096, "qwen2.5-0.5b": 494_032_768, "qwen2.5-7b": 7_615_616_512}
    assert {name: KNOWN_MODELS[name].parameters for name in published} == published


@pytest.mark.parametrize(
    ("model_id", "parameters"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", 134_515_008),
        ("meta-llama/Meta-Llama-3.1-70B-Instruct", 70_553_706_496),
        ("Qwen/Qwen2.5-7B", 7_615_616_512),
        ("acme/frobnicator-13B-chat", 13_000_000_000),  # from the id
        ("EleutherAI/pythia-70m", 70_000_000),
        ("acme/moe-4x2b", 8_000_000_000),
    ],
)
def test_sizes_of_known_models_and_sizes_named_in_the_id(model_id, parameters) -> None:
    assert model_size(model_id).parameters == parameters


def test_a_model_of_unknown_size_is_refused_saying_what_would_do() -> None:
    with pytest.raises(UnknownModelSize, match="config.json"):
        model_size("someone/mystery-model")


@pytest.mark.parametrize(
    ("parameters", "tier"),
    [(135e6, "small"), (3.2e9, "small"), (7.2e9, "medium"), (12.2e9, "medium"), (13e9, "large"),
     (34.4e9, "large"), (46.7e9, "large"), (70.6e9, "xl"), (405e9, "xl")],
)
def test_tiers(parameters, tier) -> None:
    assert tier_of(parameters) == tier


def test_the_default_model_is_small_and_runs_on_the_cpu_of_the_embedded_default(settings) -> None:
    e = estimate("HuggingFaceTB/SmolLM2-135M-Instruct", PAIRS, Hyperparams(), settings)
    assert (e.tier, e.gpu, e.gpu_count, e.parameters) == ("small", "cpu", 1, 134_515_008)
    assert e.memory_gb.qlora < e.memory_gb.lora < 4
    # ~180 tokens/s as measured here, over 32 pairs x 3 epochs.
    tokens = sum(pair_tokens(p.question, p.answer, 128) for p in PAIRS) * 3
    assert e.training_tokens == tokens
    assert e.tokens_per_s == pytest.approx(180 * 135e6 / 134_515_008, rel=1e-3)
    assert e.estimated_duration_s == pytest.approx(tokens / e.tokens_per_s, abs=0.1)
    assert e.estimated_cost_usd == pytest.approx(e.estimated_duration_s / 3600 * settings.gpu_prices["cpu"], rel=1e-3)
    assert any("CPU" in a for a in e.assumptions)


def test_a_gpu_deployment_names_its_gpu(settings) -> None:
    gpu = settings.model_copy(update={"estimate_tiers": {
        **settings.estimate_tiers,
        "small": ComputeTier(gpu="L4-24GB", gpu_memory_gb=24, tokens_per_s=9000, reference_params=135e6)}})
    e = estimate("HuggingFaceTB/SmolLM2-135M", PAIRS, Hyperparams(), gpu)
    assert (e.tier, e.gpu, e.gpu_count, e.price_per_hour_usd) == ("small", "L4-24GB", 1, 0.80)
    # bf16 on a GPU instead of fp32 on the CPU.
    assert e.memory_gb.lora < estimate("HuggingFaceTB/SmolLM2-135M", PAIRS, Hyperparams(), settings).memory_gb.lora


def test_llama_70b_is_xl_and_qlora_fits_where_lora_needs_two_gpus(settings) -> None:
    lora = estimate("meta-llama/Llama-3.1-70B", PAIRS, Hyperparams(), settings)
    qlora = estimate("meta-llama/Llama-3.1-70B", PAIRS, Hyperparams(quantization="4bit"), settings)
    assert lora.tier == "xl" and lora.gpu == settings.estimate_tiers["xl"].gpu
    assert lora.memory_gb == qlora.memory_gb and qlora.memory_gb.qlora < qlora.memory_gb.lora
    # 16-bit weights alone are 131 GiB; NF4 about a quarter of that.
    assert 131 < lora.memory_gb.lora < 160 and 33 < lora.memory_gb.qlora < 60
    assert (lora.gpu_count, qlora.gpu_count) == (2, 1)
    # QLoRA is slower per token, but on one GPU instead of two.
    assert qlora.estimated_duration_s == pytest.approx(lora.estimated_duration_s * settings.qlora_slowdown, rel=1e-2)
    assert qlora.estimated_cost_usd < lora.estimated_cost_usd


def test_longer_runs_cost_more_and_sequences_are_cut_to_max_seq_length(settings) -> None:
    long_pairs = [TrainingPair(id=f"long{i}", question="q" * 4000, answer="a" * 4000) for i in range(4)]
    short = estimate("Qwen/Qwen2.5-7B", long_pairs, Hyperparams(max_seq_length=64, num_epochs=1), settings)
    longer = estimate("Qwen/Qwen2.5-7B", long_pairs, Hyperparams(max_seq_length=64, num_epochs=5), settings)
    assert short.training_tokens == 4 * 64 and longer.training_tokens == 5 * 4 * 64
    assert longer.estimated_cost_usd == pytest.approx(5 * short.estimated_cost_usd, rel=1e-3)


def test_prices_merge_with_the_defaults_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("INFLAB_GPU_PRICES", json.dumps({"H100-80GB": 2.0, "B200": 5.5}))
    prices = Settings(_env_file=None).gpu_prices
    assert prices["H100-80GB"] == 2.0 and prices["B200"] == 5.5 and prices["cpu"] == 0.10


def test_a_gpu_without_a_price_has_no_cost_and_says_why(settings) -> None:
    priced = settings.model_copy(update={"gpu_prices": {}})
    e = estimate("meta-llama/Llama-3.1-8B", PAIRS, Hyperparams(), priced)
    assert e.estimated_cost_usd is None and e.price_per_hour_usd is None
    assert any("no price" in a for a in e.assumptions)
    assert math.isfinite(e.estimated_duration_s)


def test_unknown_tiers_are_refused_in_settings(monkeypatch) -> None:
    monkeypatch.setenv("INFLAB_ESTIMATE_TIERS", json.dumps({"huge": {"gpu": "x", "tokens_per_s": 1,
                                                                      "reference_params": 1}}))
    with pytest.raises(ValueError, match="unknown tier"):
        Settings(_env_file=None)
