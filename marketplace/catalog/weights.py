"""What a model's files say about it, read without loading (or downloading) its weights.

A Hugging Face-format model is a folder (or a Hub repository) with `config.json` and safetensors files.
A safetensors file opens with an 8-byte little-endian header length, then a JSON header giving every
tensor's dtype and shape: the exact parameter count is the sum of the shapes' products, read from a few
kilobytes. On the Hub, huggingface_hub reads those headers with HTTP Range requests
(`HfApi.get_safetensors_metadata`), so registering a 70B model transfers kilobytes, not 140 GB.

`config.json` gives the architecture (what decides whether the pinned engine can serve it, and as what),
the context length and the facts the KV-cache estimate needs (layers, KV heads, head size; see fits.py).
A LoRA adapter's folder has `adapter_config.json` (its base model, rank and target modules) and
`adapter_model.safetensors`.

Every failure is a `WeightsError` naming the file and what is wrong with it, for a person to fix.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2
from huggingface_hub import (
    HfApi,
    get_local_safetensors_metadata,
    get_session,
    hf_hub_url,
)
from huggingface_hub import errors as hub_errors
from huggingface_hub.constants import SAFETENSORS_MAX_HEADER_LENGTH
from huggingface_hub.utils import SafetensorsFileMetadata, SafetensorsRepoMetadata, TensorInfo

from serving.spec import LORA_RANKS, engine_architecture_kind

if TYPE_CHECKING:
    from learning.storage import StoredFile, StoreFolder

CONFIG = "config.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE = "chat_template.jinja"
# Every config.json spelling of the longest context a model was trained for, in order of preference.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "max_seq_len")
CONFIG_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32", "bf16": "bfloat16"}
HUB_TIMEOUT_SECONDS = 10.0
# Layers that read the hidden state itself (Llama, Qwen, Mistral and most decoders name them so).
INPUT_LAYERS = (".q_proj.", ".k_proj.", ".v_proj.", ".gate_proj.", ".up_proj.")


class WeightsError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ModelFiles:
    """What registration learnt from a model's files."""

    architecture: str
    kind: str  # serving.spec's architecture kinds: generate, multimodal, embedding, classification
    parameters: int
    dtype: str  # of the stored weights: bfloat16, float16, float32, or "" when config.json does not say
    context_length: int
    layers: int | None
    kv_heads: int | None
    head_dim: int | None
    hidden_size: int | None
    chat_template: bool
    safetensors_files: tuple[str, ...]
    tensor_dtypes: dict[str, int] = field(default_factory=dict)  # dtype → parameters stored in it

    def as_facts(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "kind": self.kind,
            "parameters": self.parameters,
            "dtype": self.dtype,
            "context_length": self.context_length,
            "num_hidden_layers": self.layers,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "hidden_size": self.hidden_size,
            "chat_template": self.chat_template,
            "safetensors_files": list(self.safetensors_files),
            "parameters_by_dtype": self.tensor_dtypes,
        }


@dataclass(frozen=True)
class AdapterFiles:
    base_model: str  # adapter_config.json's base_model_name_or_path
    rank: int
    alpha: float | None
    target_modules: tuple[str, ...]
    parameters: int  # of the adapter itself
    # The width of the layers its lora_A matrices read (for attention and MLP input layers, the base
    # model's hidden size): what a base must match.
    input_widths: frozenset[int] = frozenset()


def parse_json(text: str | bytes, filename: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"{filename} is not valid JSON ({error}).") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{filename} must hold a JSON object, not {type(data).__name__}.")
    return data


def _positive_int(config: dict[str, Any], key: str) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise WeightsError(f"{CONFIG}: `{key}` must be a positive whole number, not {value!r}.")
    return value


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """A multimodal model keeps its language model's facts in `text_config`; others at the top."""
    nested = config.get("text_config")
    return {**config, **nested} if isinstance(nested, dict) else config


def read_config(config: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(architecture, kind, facts) from config.json; refuses what the pinned engine cannot serve."""
    architectures = config.get("architectures")
    if not isinstance(architectures, list) or not architectures or not isinstance(architectures[0], str):
        raise WeightsError(f"{CONFIG} has no `architectures` list naming the model's class.")
    architecture = architectures[0]
    kind = engine_architecture_kind(architecture)
    if kind is None:
        raise WeightsError(
            f"{CONFIG}: architecture {architecture} is not one the pinned engine (vLLM) serves; see "
            "serving/engine_architectures.json for those it does."
        )
    text = _text_config(config)
    context = next((_positive_int(text, key) for key in CONTEXT_KEYS if text.get(key) is not None), None)
    if context is None:
        raise WeightsError(f"{CONFIG} states no context length (`max_position_embeddings`).")
    layers = _positive_int(text, "num_hidden_layers") or _positive_int(text, "n_layer")
    heads = _positive_int(text, "num_attention_heads") or _positive_int(text, "n_head")
    kv_heads = _positive_int(text, "num_key_value_heads") or heads
    hidden = _positive_int(text, "hidden_size") or _positive_int(text, "n_embd")
    head_dim = _positive_int(text, "head_dim") or (hidden // heads if hidden and heads else None)
    raw_dtype = text.get("torch_dtype") or text.get("dtype") or ""
    dtype = CONFIG_DTYPES.get(str(raw_dtype), "")
    facts = {
        "context_length": context,
        "layers": layers,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_size": hidden,
        "dtype": dtype,
    }
    return architecture, kind, facts


def _parameters(metadata: SafetensorsRepoMetadata) -> tuple[int, dict[str, int]]:
    by_dtype: dict[str, int] = {}
    for file in metadata.files_metadata.values():
        for dtype, count in file.parameter_count.items():
            by_dtype[dtype] = by_dtype.get(dtype, 0) + count
    return sum(by_dtype.values()), by_dtype


def _model_files(
    config: dict[str, Any], metadata: SafetensorsRepoMetadata, chat_template: bool
) -> ModelFiles:
    architecture, kind, facts = read_config(config)
    parameters, by_dtype = _parameters(metadata)
    if parameters <= 0:
        raise WeightsError("The safetensors files hold no tensors.")
    return ModelFiles(
        architecture=architecture,
        kind=kind,
        parameters=parameters,
        dtype=facts["dtype"],
        context_length=facts["context_length"],
        layers=facts["layers"],
        kv_heads=facts["kv_heads"],
        head_dim=facts["head_dim"],
        hidden_size=facts["hidden_size"],
        chat_template=chat_template,
        safetensors_files=tuple(sorted(metadata.files_metadata)),
        tensor_dtypes=by_dtype,
    )


def _read_local_json(folder: Path, filename: str) -> dict[str, Any]:
    path = folder / filename
    if not path.is_file():
        raise WeightsError(f"{filename} is missing from {folder}.")
    return parse_json(path.read_bytes(), filename)


def _local_safetensors(folder: Path) -> SafetensorsRepoMetadata:
    if (
        not (folder / "model.safetensors").is_file()
        and not (folder / "model.safetensors.index.json").is_file()
    ):
        raise WeightsError(
            f"{folder} holds neither model.safetensors nor model.safetensors.index.json: register weights "
            "saved as safetensors (save_pretrained does by default)."
        )
    try:
        return get_local_safetensors_metadata(folder)
    except (hub_errors.SafetensorsParsingError, hub_errors.NotASafetensorsRepoError) as error:
        raise WeightsError(f"A safetensors file in {folder} is malformed: {error}") from None
    except (OSError, KeyError, ValueError) as error:  # a shard named by the index is missing or unreadable
        raise WeightsError(f"The safetensors files in {folder} cannot be read: {error}") from None


def read_folder(folder: Path) -> ModelFiles:
    """A folder of Hugging Face-format weights (a volume, or an object-store prefix mounted as one)."""
    if not folder.is_dir():
        raise WeightsError(f"{folder} is not a folder this platform can read.")
    config = _read_local_json(folder, CONFIG)
    chat = (folder / CHAT_TEMPLATE).is_file()
    if not chat and (folder / TOKENIZER_CONFIG).is_file():
        chat = bool(
            parse_json((folder / TOKENIZER_CONFIG).read_bytes(), TOKENIZER_CONFIG).get("chat_template")
        )
    return _model_files(config, _local_safetensors(folder), chat)


SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


def parse_safetensors_header(header: bytes, filename: str) -> SafetensorsFileMetadata:
    """A safetensors header's JSON (the bytes after its 8-byte length) as huggingface_hub's metadata."""
    data = parse_json(header, filename)
    metadata = data.pop("__metadata__", None)
    tensors: dict[str, TensorInfo] = {}
    for name, tensor in data.items():
        shape, offsets = (
            (tensor.get("shape"), tensor.get("data_offsets")) if isinstance(tensor, dict) else (0, 0)
        )
        if (
            not isinstance(tensor, dict)
            or not isinstance(tensor.get("dtype"), str)
            or not isinstance(shape, list)
            or not all(isinstance(size, int) and size >= 0 for size in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
        ):
            raise WeightsError(
                f"{filename}: the header's entry for {name} is not a tensor (dtype, shape, offsets)."
            )
        tensors[name] = TensorInfo(dtype=tensor["dtype"], shape=shape, data_offsets=(offsets[0], offsets[1]))
    return SafetensorsFileMetadata(metadata=metadata if isinstance(metadata, dict) else {}, tensors=tensors)


def _stored_header(folder: StoreFolder, filename: str, size: int) -> SafetensorsFileMetadata:
    """One safetensors file's header from the store: its 8-byte length, then the header, two ranged GETs."""
    if size < 10:
        raise WeightsError(f"{filename} is {size} bytes: too small to be a safetensors file.")
    head = folder.read(filename, 0, 8)
    if len(head) != 8:
        raise WeightsError(f"{filename}: the store gave {len(head)} bytes for its first 8 (a ranged read).")
    (length,) = struct.unpack("<Q", head)
    if not 2 <= length <= min(SAFETENSORS_MAX_HEADER_LENGTH, size - 8):
        raise WeightsError(
            f"{filename}: its header says {length} bytes, which the file or the format does not allow."
        )
    header = folder.read(filename, 8, length)
    if len(header) != length:
        raise WeightsError(f"{filename}: the store gave {len(header)} of its header's {length} bytes.")
    return parse_safetensors_header(header, filename)


# config.json, tokenizer_config.json and the safetensors index are read whole: at most this big.
MAX_JSON_BYTES = 32 * 1024 * 1024


def _stored_json(folder: StoreFolder, files: dict[str, StoredFile], filename: str) -> dict[str, Any]:
    size = files[filename].size
    if size > MAX_JSON_BYTES:
        raise WeightsError(f"{filename} is {size:,} bytes: more than a model's {filename} ever is.")
    return parse_json(folder.read(filename), filename)


def read_store(folder: StoreFolder, files: dict[str, StoredFile]) -> ModelFiles:
    """A folder of Hugging Face-format weights in an object store (`files`: its listing), read the way the
    Hub is: config.json and tokenizer_config.json whole, and only the safetensors headers (ranged GETs), so
    registering a 70B model transfers kilobytes. Refusals name the file and the folder."""
    where = folder.uri
    if CONFIG not in files:
        names = ", ".join(sorted(files)[:8]) or "nothing"
        raise WeightsError(f"{CONFIG} is missing from {where} (it holds {names}).")
    config = _stored_json(folder, files, CONFIG)
    chat = CHAT_TEMPLATE in files
    if not chat and TOKENIZER_CONFIG in files:
        chat = bool(_stored_json(folder, files, TOKENIZER_CONFIG).get("chat_template"))
    if SAFETENSORS_INDEX in files:
        index = _stored_json(folder, files, SAFETENSORS_INDEX)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightsError(f"{SAFETENSORS_INDEX} has no `weight_map` of tensors to files.")
        shards = sorted({str(shard) for shard in weight_map.values()})
        missing = [shard for shard in shards if shard not in files]
        if missing:
            raise WeightsError(
                f"{SAFETENSORS_INDEX} names {', '.join(missing)}, which {where} does not hold."
            )
        metadata = SafetensorsRepoMetadata(
            metadata=index.get("metadata") if isinstance(index.get("metadata"), dict) else None,
            sharded=True,
            weight_map=weight_map,
            files_metadata={shard: _stored_header(folder, shard, files[shard].size) for shard in shards},
        )
    elif SAFETENSORS in files:
        header = _stored_header(folder, SAFETENSORS, files[SAFETENSORS].size)
        metadata = SafetensorsRepoMetadata(
            metadata=None,
            sharded=False,
            weight_map=dict.fromkeys(header.tensors, SAFETENSORS),
            files_metadata={SAFETENSORS: header},
        )
    else:
        raise WeightsError(
            f"{where} holds neither {SAFETENSORS} nor {SAFETENSORS_INDEX}: register weights saved as "
            "safetensors (save_pretrained does by default)."
        )
    return _model_files(config, metadata, chat)


def _hub_get(repo: str, revision: str, filename: str, token: str | None) -> httpx2.Response:
    url = hf_hub_url(repo, filename, revision=revision)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return get_session().get(url, headers=headers, follow_redirects=True, timeout=HUB_TIMEOUT_SECONDS)


def _hub_error(repo: str, revision: str, error: Exception) -> WeightsError:
    if isinstance(error, hub_errors.GatedRepoError):
        return WeightsError(f"{repo} is gated: give a token of an account that accepted its terms.")
    if isinstance(error, hub_errors.RevisionNotFoundError):
        return WeightsError(f"{repo} has no commit {revision}.")
    if isinstance(error, hub_errors.RepositoryNotFoundError):
        return WeightsError(
            f"{repo} is not on the Hugging Face Hub, or is private and the token cannot read it."
        )
    if isinstance(error, hub_errors.NotASafetensorsRepoError):
        return WeightsError(
            f"{repo}@{revision} holds neither model.safetensors nor model.safetensors.index.json: only "
            "safetensors weights can be registered."
        )
    if isinstance(error, hub_errors.SafetensorsParsingError):
        return WeightsError(f"A safetensors header of {repo}@{revision} is malformed: {error}")
    if isinstance(error, httpx2.TransportError):
        return WeightsError(f"The Hugging Face Hub could not be reached ({type(error).__name__}); try again.")
    return WeightsError(f"The Hugging Face Hub refused {repo}@{revision}: {error}")


HUB_ERRORS = (
    hub_errors.HfHubHTTPError,
    hub_errors.NotASafetensorsRepoError,
    hub_errors.SafetensorsParsingError,
    httpx2.HTTPError,
)


def read_hub(repo: str, revision: str, token: str | None) -> ModelFiles:
    """A Hub repository at a pinned commit: config.json and tokenizer_config.json (small files) and the
    safetensors headers (Range requests). No weights are downloaded."""
    try:
        response = _hub_get(repo, revision, CONFIG, token)
        if response.status_code == 404:
            raise WeightsError(
                f"{repo}@{revision} has no {CONFIG}, or the repository or commit does not exist."
            )
        if response.status_code in (401, 403):
            raise WeightsError(f"{repo} is private or gated, and the token given cannot read it.")
        response.raise_for_status()
        config = parse_json(response.content, CONFIG)
        tokenizer = _hub_get(repo, revision, TOKENIZER_CONFIG, token)
        chat = tokenizer.status_code == 200 and bool(
            parse_json(tokenizer.content, TOKENIZER_CONFIG).get("chat_template")
        )
        metadata = HfApi().get_safetensors_metadata(
            repo, revision=revision, token=token or False, timeout=HUB_TIMEOUT_SECONDS
        )
    except WeightsError:
        raise
    except HUB_ERRORS as error:
        raise _hub_error(repo, revision, error) from None
    return _model_files(config, metadata, chat)


def read_adapter(folder: Path) -> AdapterFiles:
    """A PEFT LoRA adapter's folder: adapter_config.json and adapter_model.safetensors, checked against
    each other (the rank the config states is the rank of every lora_A matrix)."""
    if not folder.is_dir():
        raise WeightsError(f"{folder} is not a folder this platform can read.")
    config = _read_local_json(folder, ADAPTER_CONFIG)
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise WeightsError(
            f"{ADAPTER_CONFIG}: `peft_type` is {peft_type!r}; only LoRA adapters can be served."
        )
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base.strip():
        raise WeightsError(f"{ADAPTER_CONFIG} names no `base_model_name_or_path`.")
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise WeightsError(f"{ADAPTER_CONFIG}: `r` (the rank) must be a positive whole number, not {rank!r}.")
    if rank > max(LORA_RANKS):
        raise WeightsError(f"{ADAPTER_CONFIG}: rank {rank} is above {max(LORA_RANKS)}, the most vLLM serves.")
    modules = config.get("target_modules")
    if isinstance(modules, str):
        modules = [modules]
    if not isinstance(modules, list) or not modules or not all(isinstance(m, str) and m for m in modules):
        raise WeightsError(f"{ADAPTER_CONFIG}: `target_modules` must name the layers the adapter changes.")
    alpha = config.get("lora_alpha")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise WeightsError(f"{ADAPTER_WEIGHTS} is missing from {folder}.")
    try:
        tensors = get_local_safetensors_metadata(folder / ADAPTER_WEIGHTS).files_metadata
    except (hub_errors.SafetensorsParsingError, hub_errors.NotASafetensorsRepoError, OSError) as error:
        raise WeightsError(f"{ADAPTER_WEIGHTS} is malformed: {error}") from None
    parameters = 0
    widths: set[int] = set()
    for file in tensors.values():
        for name, tensor in file.tensors.items():
            parameters += tensor.parameter_count
            if "lora_A" not in name:
                continue
            if len(tensor.shape) != 2 or tensor.shape[0] != rank:
                raise WeightsError(
                    f"{ADAPTER_WEIGHTS}: {name} has shape {tensor.shape}, but {ADAPTER_CONFIG} says r={rank} "
                    "(a lora_A matrix is rank × input width)."
                )
            if rank >= tensor.shape[1]:
                raise WeightsError(
                    f"{ADAPTER_CONFIG}: rank {rank} is not below the width of {name} ({tensor.shape[1]}): "
                    "such an adapter is no low-rank update."
                )
            if any(part in name for part in INPUT_LAYERS):
                widths.add(tensor.shape[1])
    if parameters == 0:
        raise WeightsError(f"{ADAPTER_WEIGHTS} holds no tensors.")
    return AdapterFiles(
        base_model=base.strip(),
        rank=rank,
        alpha=float(alpha) if isinstance(alpha, (int, float)) and not isinstance(alpha, bool) else None,
        target_modules=tuple(modules),
        parameters=parameters,
        input_widths=frozenset(widths),
    )
