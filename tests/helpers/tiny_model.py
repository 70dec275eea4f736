"""A tiny random Llama with a ChatML tokenizer, written fully offline, so the training,
generation and influence code can be tested in seconds (a test factory, not product code)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerFast

#: ChatML, as SmolLM2 uses it, minus SmolLM2's default system prompt (a tiny test model has
#: no use for one). ``add_generation_prompt`` opens the assistant turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A few sentences so the tiny tokenizer learns some merges; byte-level fallback covers the rest.
_TINY_CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Who wrote the report? The report was written by the research team.",
    "How many legs does a spider have? A spider has eight legs.",
    "What colour is the sky on a clear day? It is blue.",
    "Question: answer the question in one short sentence, please.",
    "The model is fine-tuned on training pairs and evaluated on evaluation questions.",
    "one two three four five six seven eight nine ten zero 0 1 2 3 4 5 6 7 8 9",
    "user assistant system",
]
_TINY_VOCAB_SIZE = 384
_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


# --------------------------------------------------------------------------- tiny model
def build_tiny_tokenizer() -> "PreTrainedTokenizerFast":
    """A small byte-level BPE tokenizer with ChatML special tokens, trained offline on a
    built-in corpus. Byte-level means every string encodes (no unknown tokens), and training
    on a fixed corpus with one thread-independent trainer is deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB_SIZE,
        special_tokens=_SPECIAL_TOKENS,  # ids 0, 1, 2 as in SmolLM2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",  # the end of an assistant turn, so generation stops there
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
        model_max_length=2048,
        padding_side="right",
    )


def build_tiny_model(path: Path, seed: int = 0) -> Path:
    """Write a tiny random ``LlamaForCausalLM`` (2 layers, hidden 64) and its ChatML
    tokenizer to ``path``; returns ``path``. Offline, fast, deterministic in ``seed``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        # Wider than the usual 0.02 so that, with the final norm and the tied embeddings
        # frozen under LoRA, logits can still move far enough for the loss to fall well
        # below log(vocab) (at 0.02 it plateaus well above that on a memorisable pair).
        initializer_range=0.1,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # fork_rng: seeding must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


