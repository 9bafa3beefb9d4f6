"""A tiny chat model built offline, for tests and benchmarks that need speed, never a user's answer.

A byte-level BPE tokenizer trained on the Python standard library's own sources, a 2-layer Llama
with random weights and a chat template, saved with `save_pretrained` so it loads through the
same `from_pretrained` path as a real model. Under 1 MB, built in a few seconds, deterministic for
a given seed and Python version. It talks nonsense: it exists so that a test of the plumbing has
a local model that really runs in milliseconds. What answers a user with nothing configured is
the embedded SmolLM2 model (`farm_jupyter.embedded`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import sysconfig
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import MissingDependency

MARKER = "farm-tiny-model.json"  # written last: a folder without it is an unfinished build
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
_VERSION = 1
# What save_pretrained writes here: only a folder holding nothing else may be replaced.
_OURS = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    MARKER,
}


def default_tiny_model_dir() -> Path:
    """`$FARM_CACHE_DIR/tiny-chat`, else `~/.cache/farm_jupyter/tiny-chat`."""
    root = os.environ.get("FARM_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "farm_jupyter"
    return base / "tiny-chat"


def is_built(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MARKER).is_file()


def _corpus() -> Iterator[str]:
    stdlib = sysconfig.get_paths()["stdlib"]
    for name in sorted(glob.glob(os.path.join(stdlib, "*.py")))[:200]:
        with open(name, encoding="utf-8", errors="ignore") as f:
            yield f.read()


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: tuple[int, bool] = (0, False)


@contextlib.contextmanager
def quiet_hf(*, warnings: bool = True) -> Iterator[None]:
    """No HF progress bars (and, with `warnings`, no info/warning logs) while this is entered.

    Reference-counted: concurrent loads share one saved state, restored when the last one exits.
    """
    global _quiet_depth, _quiet_saved
    from transformers.utils import logging as hf_logging

    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_saved = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled())
        _quiet_depth += 1
        hf_logging.disable_progress_bar()
        if warnings:
            hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                verbosity, bars = _quiet_saved
                hf_logging.set_verbosity(verbosity)
                if bars:
                    hf_logging.enable_progress_bar()


def _write(out: Path, seed: int) -> None:
    try:
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    except ImportError as exc:
        raise MissingDependency(exc.name or "transformers", "hf") from exc

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        min_frequency=2,
        special_tokens=SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        unk_token=None,
        model_max_length=512,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    cfg = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        tie_word_embeddings=True,
    )
    # fork_rng: seeding must not disturb the user's own random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg).eval()
    model.generation_config.pad_token_id = hf_tok.pad_token_id
    model.generation_config.eos_token_id = hf_tok.eos_token_id
    model.save_pretrained(out)
    hf_tok.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    marker = {"version": _VERSION, "seed": seed, "vocab": len(hf_tok), "parameters": params}
    (out / MARKER).write_text(json.dumps(marker))


def _check_replaceable(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(p.name not in _OURS for p in path.iterdir())):
        raise FileExistsError(f"{path} exists and is not a tiny-model folder: pick another path or remove it")


def _clear_stale(path: Path) -> None:
    """Move an unfinished build out of the way; refuse to touch a folder holding anything else."""
    if not path.exists() or is_built(path):
        return
    _check_replaceable(path)
    trash = path.with_name(f".{path.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(path, trash)  # atomic, so of several builders only one moves it
    except OSError:
        return
    if is_built(trash):  # a finished build landed between our check and the move: put it back
        with contextlib.suppress(OSError):
            os.replace(trash, path)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_leftovers(path: Path) -> None:
    """Temporary folders of builds that were killed (older than an hour, so not running)."""
    cutoff = time.time() - 3600
    for pattern in (f".{path.name}.building-*", f".{path.name}.stale-*"):
        for old in path.parent.glob(pattern):
            with contextlib.suppress(OSError):
                if old.stat().st_mtime < cutoff:
                    shutil.rmtree(old, ignore_errors=True)


def build_tiny_model(path: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Build the tiny chat model at `path` unless a finished build is already there.

    The model is written to a temporary sibling folder and renamed into place, so concurrent
    builders (two kernels, pytest-xdist) never see half a model: one rename wins, the others
    find its marker and throw their copy away. A build killed half way leaves no marker and is
    redone.
    """
    target = Path(path).expanduser().absolute()
    if is_built(target):
        return target
    _check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        with quiet_hf():
            _write(tmp, seed)
        for _ in range(3):
            if is_built(target):
                return target
            _clear_stale(target)
            try:
                os.replace(tmp, target)
                return target
            except OSError:
                continue  # another builder got there first, or left an unfinished folder
        if is_built(target):
            return target
        raise OSError(f"could not move the tiny model into {target}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
