"""GPU memory that accounts for the context: the KV cache sized from layers, KV heads and head size,
held against figures published for well-known models."""

import pytest

from marketplace.catalog import fits
from marketplace.catalog.models import ModelCard

KIB, GIB = 1024, 2**30
LLAMA_3_1_8B = fits.ModelFacts(
    parameters=8_030_000_000, context_length=131072, layers=32, kv_heads=8, head_dim=128
)


def test_llama_3_1_8b_caches_128_kib_per_token_and_16_gib_at_128k() -> None:
    # 32 layers × 8 KV heads × 128 head size × 2 (K and V) × 2 bytes = 131,072 bytes.
    assert fits.kv_cache_bytes_per_token(32, 8, 128) == 128 * KIB
    assert fits.estimate(LLAMA_3_1_8B, 131072).kv_bytes == 16 * GIB


@pytest.mark.parametrize(
    ("layers", "kv_heads", "head_dim", "kib_per_token"),
    [
        (80, 8, 128, 320),  # Llama 3.1 70B
        (126, 8, 128, 504),  # Llama 3.1 405B
        (28, 4, 128, 56),  # Qwen2.5 7B
        (32, 32, 128, 512),  # Llama 2 7B (no grouped-query attention)
    ],
)
def test_kv_cache_per_token_of_known_models(
    layers: int, kv_heads: int, head_dim: int, kib_per_token: int
) -> None:
    assert fits.kv_cache_bytes_per_token(layers, kv_heads, head_dim) == kib_per_token * KIB


def test_latent_attention_caches_one_latent_vector_per_layer() -> None:
    # DeepSeek-V2-Lite: 27 layers × (512 + 64) latent values × 2 bytes.
    assert fits.kv_cache_bytes_per_token(27, 0, 0, latent_dim=576) == 27 * 576 * 2


def test_memory_needed_grows_with_the_context() -> None:
    # 16.06 GB of weights + 1.606 + 2 GB reserve, then the cache, all ÷ 0.9:
    # 8,192 tokens: (19.666 + 1.074) / 0.9 = 23.04 → 24 GB; 131,072 tokens: (19.666 + 17.180) / 0.9 → 41 GB.
    assert fits.estimate(LLAMA_3_1_8B, 8192).needed_gb == 24
    assert fits.estimate(LLAMA_3_1_8B, 131072).needed_gb == 41


def test_the_longest_context_that_fits_one_24_gb_gpu() -> None:
    # Room for the cache: 24 × 0.9 − 19.666 = 1.934 GB = 14,755 tokens, in steps of 1,024: 14,336.
    assert fits.largest_context(LLAMA_3_1_8B, 24) == 14336
    assert fits.estimate(LLAMA_3_1_8B, 14336).needed_gb <= 24 < fits.estimate(LLAMA_3_1_8B, 15360).needed_gb


def test_placement_takes_more_gpus_before_a_shorter_context() -> None:
    # 32,768 tokens need 27 GB: two of four 24 GB GPUs hold the default context; one alone would not.
    placement = fits.place(LLAMA_3_1_8B, gpu_count=4, gpu_memory_gb=24)
    assert (placement.tensor_parallel_size, placement.max_model_len) == (2, 32768)


def test_placement_shortens_the_context_when_no_group_holds_the_default() -> None:
    placement = fits.place(LLAMA_3_1_8B, gpu_count=1, gpu_memory_gb=24)
    assert (placement.tensor_parallel_size, placement.max_model_len) == (1, 14336)


def test_placement_refuses_when_not_even_the_shortest_context_fits() -> None:
    placement = fits.place(LLAMA_3_1_8B, gpu_count=1, gpu_memory_gb=16)
    assert not placement.fits and placement.max_model_len == 0


def test_a_requested_length_picks_the_group_that_holds_it() -> None:
    # 131,072 tokens need 41 GB: two 24 GB GPUs hold 48.
    assert fits.place(LLAMA_3_1_8B, 4, 24, max_model_len=131072).tensor_parallel_size == 2
    assert not fits.place(LLAMA_3_1_8B, 1, 24, max_model_len=131072).fits


def test_cards_without_layer_facts_keep_the_older_rule() -> None:
    encoder = fits.ModelFacts(parameters=567_754_752, context_length=8192)
    assert fits.estimate(encoder, 8192).needed_gb == fits.required_gpu_memory_gb(567_754_752, "auto") == 4


@pytest.mark.django_db
def test_the_catalog_stores_the_estimate_at_the_default_and_the_shortest_context() -> None:
    card = ModelCard.objects.get(slug="llama-3.1-8b-instruct")
    assert card.facts.kv_bytes_per_token == 128 * KIB
    assert card.gpu_memory_gb == fits.estimate(card.facts, 32768).needed_gb == 27
    assert card.min_gpu_memory_gb == fits.estimate(card.facts, 4096).needed_gb == 23
