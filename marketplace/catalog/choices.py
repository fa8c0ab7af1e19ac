"""The catalog's closed vocabularies. The loader refuses anything outside them."""

from django.db import models


class CommercialUse(models.TextChoices):
    """Whether a license allows commercial use, said plainly on every card."""

    ALLOWED = "allowed", "Commercial use allowed"
    CONDITIONS = "conditions", "Commercial use allowed with conditions"
    NOT_ALLOWED = "not-allowed", "No commercial use"


TASKS = (
    "chat",
    "text-generation",
    "code-generation",
    "embedding",
    "reranking",
    "vision-language",
    "translation",
    "reasoning",
    "tool-use",
    "summarization",
    "speech-recognition",
    "text-to-speech",
    "image-generation",
    "protein-modeling",
)
DOMAINS = ("general", "code", "finance", "legal", "medical", "science", "math", "biology")
MODALITIES_IN = ("text", "image", "audio", "video")
MODALITIES_OUT = ("text", "embedding", "score", "image", "audio")

# The invoke routes a deployment can serve, in the order they are listed. A card's routes follow from its
# tasks (ModelCard.routes); the gateway answers only these for a deployment of the card.
ROUTES = (
    "chat.completions",
    "responses",
    "completions",
    "embeddings",
    "rerank",
    "score",
    "audio.transcriptions",
    "audio.translations",
)
# Task → routes it opens. Chat models also complete raw text; a reranker (cross-encoder) scores pairs.
# Speech recognition transcribes; with the translation task it also translates speech into English.
ROUTES_BY_TASK: dict[str, tuple[str, ...]] = {
    "chat": ("chat.completions", "responses", "completions"),
    "vision-language": ("chat.completions", "responses"),
    "tool-use": ("chat.completions", "responses"),
    "reasoning": ("chat.completions", "responses"),
    "text-generation": ("completions",),
    "code-generation": ("completions",),
    "summarization": ("completions",),
    "embedding": ("embeddings",),
    "reranking": ("rerank", "score"),
    "speech-recognition": ("audio.transcriptions",),
}
# Routes served by vLLM's pooling runner rather than by generation.
POOLING_ROUTES = frozenset({"embeddings", "rerank", "score"})
# What the pinned engine (vLLM 0.33) cannot produce at all, whatever the card: a reason for a person.
UNSERVABLE_OUTPUTS = {
    "image": "the pinned engine (vLLM) generates text and vectors, not images",
    "audio": "the pinned engine (vLLM) transcribes speech but does not synthesise it",
}
DTYPES = ("bfloat16", "float16", "float32")
INSTANCE_PROVIDERS = ("aws", "gcp", "azure", "on-prem", "local")

# Engine options a card may default; the deployment form offers the same allow-list.
ENGINE_DEFAULT_KEYS = (
    "max_model_len",
    "max_num_seqs",
    "enable_prefix_caching",
    "trust_remote_code",
    "runner",
    "tokenizer_mode",
    "quantization",
    "enable_auto_tool_choice",
    "tool_call_parser",
)

# Bytes per weight as served. vLLM's `--dtype auto` serves float32 checkpoints in 16 bits, so only an
# explicit float32 serving dtype costs 4 bytes.
BYTES_PER_PARAMETER = {"auto": 2, "bfloat16": 2, "float16": 2, "float32": 4}


class CustomModelSource(models.TextChoices):
    """Where an organisation's custom model's weights come from."""

    HUB = "hub", "Hugging Face repository"
    PATH = "path", "Folder on a volume"
    STORE = "store", "Object store (S3-compatible)"
    ADAPTER = "adapter", "LoRA adapter on a base model"
