"""The influence methods a run can ask for, and their arguments: the one source of truth.

Each method's arguments are a pydantic model here (the contract). The gateway validates an
experiment's ``influence_args`` with them (a bad value is a 422 naming e.g.
``influence_args.datainf.damping``), ``GET /api/methods`` is generated from them, and the
influence service parses a run's arguments with them before any work. The maths behind
each argument is documented where it is used (``inflab.influence.methods``).

What each method is good at, as the influence benchmark found it (README, "Influence
benchmark"): once the model has memorised an example its gradient shrinks, so the methods
that look only at the final checkpoint (DataInf, EK-FAC) lose track of it, while TracIn
over every checkpoint with normalised gradients keeps finding it.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inflab.core.vocabulary import INFLUENCE_METHODS, InfluenceMethodId, Variant as VariantId

#: Training pairs listed per evaluation question and sign in a result's summary.
DEFAULT_TOP_K = 5
#: Examples per forward+backward when a run does not say.
DEFAULT_BATCH_SIZE = 8

Speed = Literal["fast", "balanced", "precise"]

#: An argument's ``json_schema_extra`` when the editor may fold it away (rarely changed).
ADVANCED = {"advanced": True}

# The argument types several methods share (each method documents what it does with them).
#: A checkpoint by its training step; null: the final checkpoint.
CheckpointStep = Annotated[int | None, Field(ge=0, json_schema_extra=ADVANCED)]
#: Also compute the ``normalized`` variant.
Normalized = Annotated[bool, Field(json_schema_extra=ADVANCED)]
#: A positive damping or scale.
Positive = Annotated[float, Field(gt=0, le=1e6)]
#: A decoder layer, negative: from the end.
Layer = Annotated[int, Field(ge=-1024, le=1024)]
#: How many training pairs a kronfluence pass fits on (the first ones); null: all.
MaxExamples = Annotated[int | None, Field(ge=1, json_schema_extra=ADVANCED)]
#: A model id or object-store path (``old_model`` / ``new_model``).
ModelName = Annotated[str | None, Field(min_length=1, max_length=512, json_schema_extra=ADVANCED)]


#: How ``old_model``/``new_model`` name a model saved in the object store instead of a
#: model id: ``store:`` and the key prefix of the saved folder (``save_pretrained``'s
#: ``config.json``, weights and tokenizer files). Only prefixes under ``models/`` are
#: accepted: the operator's (or a researcher's) shared models, never another run's files
#: (``runs/...``). The scheme keeps the two apart: ``models/tiny`` alone is a hub id.
STORED_MODEL_SCHEME = "store:"
STORED_MODEL_ROOT = "models"
_KEY_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def stored_model_key(value: str) -> str | None:
    """The object-store key prefix ``value`` names (``store:models/x`` -> ``models/x``), or
    None when ``value`` is a model id."""
    return value[len(STORED_MODEL_SCHEME):] if value.startswith(STORED_MODEL_SCHEME) else None


def stored_model_problem(value: str) -> str | None:
    """Why ``value`` is not an acceptable object-store path (None when it is)."""
    key = stored_model_key(value)
    if key is None:
        return None
    parts = key.split("/")
    if len(parts) < 2 or parts[0] != STORED_MODEL_ROOT:
        return (f"an object-store path is {STORED_MODEL_SCHEME}{STORED_MODEL_ROOT}/<name> (a saved model folder "
                f"under {STORED_MODEL_ROOT}/ in the object store)")
    if any(_KEY_SEGMENT.fullmatch(part) is None or ".." in part for part in parts[1:]):
        return "an object-store path's segments are letters, digits, '_', '.' and '-', without '..'"
    return None


class MethodArgs(BaseModel):
    """What every method takes. Unknown names are refused (a typo must not be silently
    ignored) and numbers must be finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, use_attribute_docstrings=True)

    top_k: int = Field(DEFAULT_TOP_K, ge=1, le=1000)
    """Training pairs listed per evaluation question, for each sign, in the result's summary
    (the full matrix is stored whatever this is)."""
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1, le=1024, json_schema_extra=ADVANCED)
    """Examples per forward and backward pass (grouped by length); more is faster and needs
    more memory; the scores do not change."""


class TracInArgs(MethodArgs):
    """TracIn over every saved checkpoint (Pruthi et al. 2020)."""

    normalization: Literal["trackstar", "unit"] = "trackstar"
    """The normalised variant's cosine: ``trackstar`` (Adam-corrected, Gauss-Newton
    preconditioned gradients, Chang et al. 2024) or ``unit`` (plain cosine of the
    gradients)."""
    damping: Positive = 0.1
    """``trackstar`` only: the Gauss-Newton preconditioner's damping, as a multiple of its
    mean eigenvalue; larger is closer to the plain cosine."""
    optimizer_correction: bool = Field(True, json_schema_extra=ADVANCED)
    """``trackstar`` only: scale gradients by Adam's per-parameter step size, read from
    the optimizer state saved with each checkpoint."""


class DataInfArgs(MethodArgs):
    """DataInf at one checkpoint (Kwon et al., ICLR 2024)."""

    damping: Positive | None = None
    """One fixed damping for every LoRA layer; null: the paper's per-layer default
    (``damping_scale`` x the layer's mean squared gradient entry)."""
    damping_scale: Annotated[Positive, Field(json_schema_extra=ADVANCED)] = 0.1
    """The per-layer default damping's factor (the paper's 0.1), when ``damping`` is null."""
    checkpoint_step: CheckpointStep = None
    """The checkpoint to run on, by its training step; null: the final checkpoint."""
    normalized: Normalized = True
    """Also compute the normalised variant (costs the training gradients' Gram matrix,
    a few percent more at 1000 pairs)."""


class EKFACArgs(MethodArgs):
    """EK-FAC through kronfluence at one checkpoint (Grosse et al. 2023)."""

    strategy: Literal["ekfac", "kfac", "diagonal", "identity"] = "ekfac"
    """kronfluence's curvature approximation: ``ekfac`` (eigenvalue-corrected
    Kronecker factors), ``kfac``, ``diagonal`` or ``identity`` (plain gradient dot products)."""
    use_empirical_fisher: bool = False
    """true: the empirical Fisher (the pairs' own answers); false: the true Fisher
    (answers sampled from the model), kronfluence's default."""
    damping_factor: float | None = Field(1e-8, ge=0, le=1e6)
    """Added to the curvature's eigenvalues before inverting; null: kronfluence's
    heuristic (0.1 x their mean)."""
    covariance_max_examples: MaxExamples = 100_000
    """Training pairs the covariance factors are fitted on (the first ones); null: all."""
    lambda_max_examples: MaxExamples = 100_000
    """Training pairs the corrected eigenvalues are fitted on; null: all."""
    query_gradient_low_rank: int | None = Field(None, ge=1, json_schema_extra=ADVANCED)
    """Approximate each evaluation question's gradient by this rank; null: exact."""
    normalized: Normalized = True
    """Also compute the normalised variant (nearly free with ``scoring: gradients``)."""
    scoring: Literal["gradients", "kronfluence"] = Field("gradients", json_schema_extra=ADVANCED)
    """``gradients``: scores from the per-example LoRA gradients preconditioned with
    kronfluence's factors (shared with TracIn and DataInf); ``kronfluence``: its own
    pairwise passes (two more passes over the training set, the same numbers)."""
    lambda_pass: Literal["shared", "kronfluence"] = Field("shared", json_schema_extra=ADVANCED)
    """``shared``: the corrected eigenvalues from gradients taken on the covariance pass's
    forward; ``kronfluence``: its own eigenvalue pass (one more pass over the training set)."""
    checkpoint_step: CheckpointStep = None
    """The checkpoint to run on, by its training step; null: the final checkpoint."""
    eigendecomposition_threads: int = Field(1, ge=0, le=1024, json_schema_extra=ADVANCED)
    """torch threads for the eigendecomposition (0: the worker's setting); one is fastest
    for LoRA-sized factors on a CPU."""
    seed: int = Field(0, ge=0, le=2**31 - 1, json_schema_extra=ADVANCED)
    """Seed of the answers sampled for the true Fisher."""


#: What an ablation grid of a representation method may vary (all from cached features).
GRID_KEYS = ("layers", "pooling", "aggregation", "top_layers", "normalization", "similarity")
#: ``layers``: ``all``, a list ``0,3,5`` or a range ``2-5`` (decoder layers, from 0).
LAYERS_PATTERN = r"^(all|\d+(-\d+)?(,\d+(-\d+)?)*)$"


class RepresentationArgs(MethodArgs):
    """What the representation methods share (they compare the base and the fine-tuned
    model's hidden states; forward passes and activation gradients only)."""

    layers: str = Field("all", pattern=LAYERS_PATTERN, max_length=512)
    """Decoder layers compared: ``all``, a list (``0,3,5``) or a range (``2-5``), from 0."""
    pooling: Literal["last", "answer_mean"] = "answer_mean"
    """A sequence's vector per layer: its last position the loss reads (the token before
    the last), or the mean over the tokens that carry the loss (the answer span; every
    token of a benchmark document)."""
    aggregation: Literal["mean", "topk_mean", "learned"] = "mean"
    """How the per-layer similarities become one score: their mean, the mean of the
    ``top_layers`` largest, or convex weights fitted on a validation split of the queries
    (benchmark runs only; elsewhere the mean)."""
    top_layers: int = Field(3, ge=1, le=1024, json_schema_extra=ADVANCED)
    """``topk_mean`` only: how many of the largest per-layer similarities are averaged."""
    normalization: Literal["none", "zscore"] = "none"
    """``zscore``: each layer's similarities are standardised over the training pairs (per
    evaluation question) before aggregating, so no layer dominates by its scale."""
    similarity: Literal["cosine", "dot"] = "cosine"
    """Cosine of the pooled vectors, or their dot product."""
    checkpoint_step: CheckpointStep = None
    """The fine-tuned checkpoint, by its training step; null: the final checkpoint."""
    old_model: ModelName = None
    """Compare two full checkpoints instead of the run's base and adapter: the old model's
    id (a model in the models folder, or a hub id) or object-store path
    (``store:models/<name>``: a saved model folder under the store's ``models/``); needs
    ``new_model``. The tokenizers and architectures must match, or the job is refused
    before any work."""
    new_model: ModelName = None
    """The new model's id or object-store path, with ``old_model``."""
    grid: list[dict[str, str | int]] = Field(default_factory=list, max_length=64,
                                             json_schema_extra={**ADVANCED, "cli_only": True})
    """An ablation grid: more settings of ``layers``, ``pooling``, ``aggregation``,
    ``top_layers``, ``normalization`` and ``similarity`` (one dict each, the rest as above),
    each scored from the same cached hidden states as its own variant ``grid1``, ``grid2``...
    (a new pooling computes its features once)."""

    @model_validator(mode="after")
    def _grid_keys(self) -> "RepresentationArgs":
        for i, cell in enumerate(self.grid):
            unknown = sorted(set(cell) - set(GRID_KEYS))
            if unknown:
                raise ValueError(f"grid.{i}: {unknown} cannot vary in a grid; these can: {list(GRID_KEYS)}")
            type(self).model_validate({**self.model_dump(exclude={"grid"}), **cell})
        return self

    @field_validator("old_model", "new_model")
    @classmethod
    def _stored_path(cls, value: str | None) -> str | None:
        if value is not None and value.startswith(STORED_MODEL_SCHEME):
            problem = stored_model_problem(value)
            if problem is not None:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _pair(self) -> "RepresentationArgs":
        if (self.old_model is None) != (self.new_model is None):
            raise ValueError("old_model and new_model go together: name both or neither")
        return self


class DeltaHArgs(RepresentationArgs):
    """Concept-change similarity: cosine of pooled hidden-state changes between checkpoints."""


class ActGradArgs(RepresentationArgs):
    """Activation-gradient similarity at the fine-tuned model."""


class AttrChangeArgs(RepresentationArgs):
    """Attribution-weighted change: pooled change times pooled activation gradient."""

    ig_steps: int = Field(0, ge=0, le=64)
    """0: the gradient at the fine-tuned model; K > 0: integrated gradients, the mean
    gradient over K points on the path from the old to the new hidden states (a K-step
    Riemann sum; K more forward and backward passes per layer)."""


class PatchingArgs(RepresentationArgs):
    """Gated cross-checkpoint causal patching (slow: one forward per query and example)."""

    patch_layer: Layer = -1
    """The decoder layer patched (negative: from the end)."""
    patch_fraction: float = Field(0.05, gt=0, le=1)
    """The share of hidden dimensions patched: the top ones by the training pair's
    attribution-weighted change at that layer."""


class EmbeddingArgs(MethodArgs):
    """The embedding baseline: cosine of mean-pooled hidden states of the base model."""

    layer: Layer = -1
    """The decoder layer whose output is mean-pooled (negative: from the end)."""


class RunLimits(MethodArgs):
    """What the influence job adds to a method's arguments from the run (they are not the
    researcher's to set per method): its token limits and whether it is a benchmark run."""

    max_length: int = Field(128, ge=1)
    """Token limit of a pair: the run's ``max_seq_length``, so gradients see what training saw."""
    max_new_tokens: int = Field(48, ge=1)
    """Length of the greedy answer generated for an evaluation question without a reference."""
    benchmark: bool = False
    """A benchmark run: training examples are documents (loss on every token) and the
    questions plain-text queries."""


#: method id -> its argument model.
ARGS_MODELS: dict[InfluenceMethodId, type[MethodArgs]] = {
    "tracin": TracInArgs, "datainf": DataInfArgs, "ekfac": EKFACArgs,
    "delta_h": DeltaHArgs, "act_grad": ActGradArgs, "attr_change": AttrChangeArgs, "patching": PatchingArgs,
    "embedding": EmbeddingArgs,
}


@functools.cache
def job_args_model(method: str) -> type[MethodArgs]:
    """What the influence service parses a job's arguments with: ``method``'s argument
    model and the :class:`RunLimits` (one class per method, made once)."""
    base = ARGS_MODELS[method]
    return type(base.__name__, (base, RunLimits), {
        "__doc__": f"{base.__doc__}\n\nWith the run's limits (``RunLimits``).", "__module__": __name__,
        "__qualname__": f"job_args_model({method!r})",
    })


#: The representation methods (base vs fine-tuned hidden states; no parameter gradients).
REPRESENTATION_METHODS: tuple[InfluenceMethodId, ...] = ("delta_h", "act_grad", "attr_change", "patching")


class InfluenceArgs(BaseModel):
    """Per-method arguments of a run, e.g. ``{"datainf": {"damping": 0.01}}``; a method
    not named, and every argument not named, takes its default. Every method has its
    arguments here whether or not the run computes it, so switching a method on in the
    editor keeps what was set for it."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    tracin: TracInArgs = Field(default_factory=TracInArgs)
    """TracIn's arguments."""
    datainf: DataInfArgs = Field(default_factory=DataInfArgs)
    """DataInf's arguments."""
    ekfac: EKFACArgs = Field(default_factory=EKFACArgs)
    """EK-FAC's arguments."""
    delta_h: DeltaHArgs = Field(default_factory=DeltaHArgs)
    """Concept-change similarity's arguments."""
    act_grad: ActGradArgs = Field(default_factory=ActGradArgs)
    """Activation-gradient similarity's arguments."""
    attr_change: AttrChangeArgs = Field(default_factory=AttrChangeArgs)
    """Attribution-weighted change's arguments."""
    patching: PatchingArgs = Field(default_factory=PatchingArgs)
    """Gated causal patching's arguments."""
    embedding: EmbeddingArgs = Field(default_factory=EmbeddingArgs)
    """The embedding baseline's arguments."""

    @model_validator(mode="before")
    @classmethod
    def _known_methods(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [m for m in data if m not in ARGS_MODELS]
            if unknown:
                raise ValueError(f"arguments for unknown influence method(s) {unknown}; known: {list(ARGS_MODELS)}")
        return data

    def of(self, method: str) -> MethodArgs:
        return getattr(self, method)


class Variant(BaseModel):
    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    id: VariantId
    """The ``variant`` of the method's influence matrices."""
    description: str
    """What the variant's scores mean, for this method."""


class MethodInfo(BaseModel):
    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    id: InfluenceMethodId
    """As named in an experiment's ``influence_methods`` and ``influence_args``."""
    label: str
    """The name to show."""
    speed: Speed
    """Where the method sits between speed and fidelity: ``fast``, ``balanced`` or ``precise``."""
    description: str
    """One line: what the method is good at, and what it misses."""
    variants: list[Variant]
    """The influence matrices the method produces, in order."""


RAW = "The method's score as defined; training pairs with large gradients dominate it."

#: The catalogue, in the order the editor lists the methods.
METHODS: dict[InfluenceMethodId, MethodInfo] = {
    m.id: m
    for m in (
        MethodInfo(
            id="tracin",
            label="TracIn",
            speed="fast",
            description=(
                "Gradient agreement of each training pair with the question, summed over every saved "
                "checkpoint; normalised, it keeps finding the examples the model has memorised, which "
                "final-checkpoint methods lose. One gradient pass per checkpoint."
            ),
            variants=[
                Variant(id="raw", description=RAW + " Learning-rate-weighted dot products summed over checkpoints."),
                Variant(
                    id="normalized",
                    description=(
                        "Per-checkpoint cosines of the gradients, summed like raw: a pair ranks by the direction "
                        "of its gradient, not its size. TrackStar's cosine (Adam-corrected, Gauss-Newton "
                        "preconditioned) by default; the argument normalization: unit gives the plain cosine."
                    ),
                ),
            ],
        ),
        MethodInfo(
            id="datainf",
            label="DataInf",
            speed="balanced",
            description=(
                "Closed-form inverse-Hessian approximation over LoRA gradients at the final checkpoint: one "
                "gradient pass, the cheapest method, but on a small fine-tune it ranks like plain final-checkpoint "
                "gradient similarity, well below TracIn and EK-FAC at finding the pair a question paraphrases "
                "(its damping does not change that); it loses track of examples the model has memorised "
                "(their final gradients are small)."
            ),
            variants=[
                Variant(id="raw", description=RAW),
                Variant(
                    id="normalized",
                    description=(
                        "Cosine in DataInf's inverse-Hessian metric (RelatIF-style): the raw score divided by "
                        "both self-influences, 1 for a question identical to a training pair. Off with the "
                        "argument normalized: false."
                    ),
                ),
            ],
        ),
        MethodInfo(
            id="ekfac",
            label="EK-FAC",
            speed="precise",
            description=(
                "Eigenvalue-corrected Kronecker-factored curvature fitted on the training set (kronfluence) at "
                "the final checkpoint: the closest estimate of a pair's effect on the answer, at several times "
                "DataInf's time; with its small default damping it finds the pair a question paraphrases about as "
                "well as normalised TracIn (a large damping turns it into plain gradient similarity); like DataInf "
                "it loses track of examples the model has memorised. It covers the LoRA weights only: on a benchmark "
                "run the trained function-token rows, which TracIn and DataInf include, are left out (kronfluence "
                "factors linear layers only)."
            ),
            variants=[
                Variant(id="raw", description=RAW),
                Variant(
                    id="normalized",
                    description=(
                        "Cosine in the EK-FAC metric (RelatIF-style): the raw score divided by both "
                        "self-influences, 1 for a question identical to a training pair. Off with the argument "
                        "normalized: false."
                    ),
                ),
            ],
        ),
        MethodInfo(
            id="delta_h",
            label="Concept change (Δh)",
            speed="fast",
            description=(
                "Cosine of the pooled hidden-state changes between the base and the fine-tuned model, per "
                "layer, aggregated over layers: two forward passes, no gradients."
            ),
            variants=[Variant(id="raw", description="Aggregated per-layer similarity of the hidden-state changes.")],
        ),
        MethodInfo(
            id="act_grad",
            label="Activation gradients",
            speed="fast",
            description=(
                "Cosine of the pooled loss gradients at the fine-tuned model's hidden states, per layer: one "
                "forward and one activation backward, no parameter gradients, no Hessian."
            ),
            variants=[Variant(id="raw", description="Aggregated per-layer similarity of the activation gradients.")],
        ),
        MethodInfo(
            id="attr_change",
            label="Attribution-weighted change",
            speed="balanced",
            description=(
                "The hidden-state change weighted by the loss gradient (Δh ⊙ g), optionally with integrated "
                "gradients along the path from the old to the new states: keeps the changes that matter."
            ),
            variants=[Variant(id="raw", description="Aggregated per-layer similarity of Δh ⊙ g.")],
        ),
        MethodInfo(
            id="patching",
            label="Causal patching",
            speed="precise",
            description=(
                "Patches the training pair's most changed dimensions from the fine-tuned into the base "
                "model on the question: the answer's logit-margin gain toward the fine-tuned model. One "
                "forward per question and training pair: slow."
            ),
            variants=[Variant(id="raw", description="Change of the correct answer's logit margin, toward the new model.")],
        ),
        MethodInfo(
            id="embedding",
            label="Embedding cosine (baseline)",
            speed="fast",
            description=(
                "Not an attribution: the cosine of the base model's mean-pooled hidden states of the question "
                "and each training pair, a semantic-similarity baseline. On a benchmark run it also records "
                "which queries the fine-tuned model answers correctly."
            ),
            variants=[Variant(id="raw", description="Cosine of mean-pooled hidden states (question text only).")],
        ),
    )
}

assert list(METHODS) == list(ARGS_MODELS) == list(INFLUENCE_METHODS), (
    "every method needs its argument model and its catalogue entry, in the vocabulary's order"
)


def describe_errors(errors: list[dict[str, Any]], prefix: str = "") -> str:
    """Pydantic errors as one line naming each argument: ``datainf.damping: Input should
    be greater than 0``."""
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    return "; ".join(parts)

