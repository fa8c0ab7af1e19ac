"""Real model files for custom model tests, written in the formats the platform reads: config.json and
safetensors files (8-byte little-endian header length, the JSON header, then the tensors' bytes)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

BYTES = {"BF16": 2, "F16": 2, "F32": 4}

# A two-layer Llama of hidden size 64 (grouped-query attention: 4 heads, 2 KV heads).
TINY_LLAMA_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "vocab_size": 100,
    "torch_dtype": "bfloat16",
}
TINY_LLAMA_TENSORS: dict[str, tuple[str, list[int]]] = {
    "model.embed_tokens.weight": ("BF16", [100, 64]),
    "model.layers.0.self_attn.q_proj.weight": ("BF16", [64, 64]),
    "model.layers.0.self_attn.k_proj.weight": ("BF16", [32, 64]),
    "model.layers.1.self_attn.q_proj.weight": ("BF16", [64, 64]),
    "model.norm.weight": ("F32", [64]),
    "lm_head.weight": ("BF16", [100, 64]),
}


def parameter_count(tensors: dict[str, tuple[str, list[int]]]) -> int:
    return sum(math.prod(shape) for _, shape in tensors.values())


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]]) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(encoded)) + encoded + bytes(offset)


def write_model(
    folder: Path,
    config: dict[str, Any] | None = None,
    tensors: dict[str, tuple[str, list[int]]] | None = None,
    *,
    chat_template: bool = True,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(TINY_LLAMA_CONFIG if config is None else config))
    (folder / "model.safetensors").write_bytes(
        safetensors_bytes(TINY_LLAMA_TENSORS if tensors is None else tensors)
    )
    if chat_template:
        (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    return folder


def adapter_tensors(rank: int, width: int = 64) -> dict[str, tuple[str, list[int]]]:
    prefix = "base_model.model.model.layers.0.self_attn"
    return {
        f"{prefix}.q_proj.lora_A.weight": ("F32", [rank, width]),
        f"{prefix}.q_proj.lora_B.weight": ("F32", [width, rank]),
        f"{prefix}.v_proj.lora_A.weight": ("F32", [rank, width]),
        f"{prefix}.v_proj.lora_B.weight": ("F32", [32, rank]),
    }


def write_adapter(
    folder: Path,
    base_model: str,
    *,
    rank: int = 8,
    tensor_rank: int | None = None,
    width: int = 64,
    target_modules: Any = ("q_proj", "v_proj"),
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": 16,
        "target_modules": list(target_modules) if isinstance(target_modules, tuple) else target_modules,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    tensors = adapter_tensors(rank if tensor_rank is None else tensor_rank, width)
    (folder / "adapter_model.safetensors").write_bytes(safetensors_bytes(tensors))
    return folder
