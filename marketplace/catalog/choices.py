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
)
DOMAINS = ("general", "code", "finance", "legal", "medical", "science", "math")
MODALITIES_IN = ("text", "image", "audio", "video")
MODALITIES_OUT = ("text", "embedding", "score")
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
