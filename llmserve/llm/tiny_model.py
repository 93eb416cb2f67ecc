"""Build a tiny random-weight Llama model (and LoRA adapters) locally, without a model hub.

The result is a regular Hugging Face model directory that vLLM's CPU backend loads:
a byte-level BPE tokenizer trained on :mod:`llmserve.llm.tiny_corpus` with a
ChatML-like chat template, a ``LlamaForCausalLM`` with head dim 64, and with
``num_loras > 0`` that many ``peft`` LoRA adapters under ``loras/lora-<i>``.
Everything is deterministic given the seed. A stamp file records the
parameters, so building again into the same directory returns at once.

transformers, tokenizers and peft are imported lazily: importing this module is cheap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STAMP_FILE = "tiny-model.json"
FORMAT_VERSION = 2
HEAD_DIM = 64
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
IM_START_TOKEN = "<|im_start|>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, IM_START_TOKEN)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TinyModelParams:
    """Everything that determines the files; written to the stamp file."""

    seed: int = 0
    num_loras: int = 0
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    vocab_size: int = 2048
    max_position_embeddings: int = 2048
    lora_rank: int = 8
    format_version: int = FORMAT_VERSION

    def validate(self) -> None:
        if self.hidden_size != self.num_heads * HEAD_DIM:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be num_heads ({self.num_heads}) * "
                f"{HEAD_DIM}: vLLM's CPU backend needs head dim >= 64"
            )
        if self.vocab_size < 512:
            raise ValueError(f"vocab_size must be >= 512, got {self.vocab_size}")
        if self.num_loras < 0 or self.num_layers < 1:
            raise ValueError("num_loras must be >= 0 and num_layers >= 1")


def build_tiny_model(
    out_dir: Path,
    *,
    seed: int = 0,
    num_loras: int = 0,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    vocab_size: int = 2048,
    progress: Progress | None = None,
) -> Path:
    """Build the tiny model into ``out_dir`` (idempotent) and return ``out_dir``.

    LoRA adapters, when asked for, are in ``out_dir / "loras" / f"lora-{i}"``.
    The directory is assembled next to ``out_dir`` and moved into place, so a
    reader never sees a half-written model. An existing non-empty ``out_dir``
    that was not built by this function is refused rather than overwritten.
    """
    params = TinyModelParams(
        seed=seed,
        num_loras=num_loras,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        vocab_size=vocab_size,
    )
    params.validate()
    say = progress or (lambda _line: None)
    out_dir = Path(out_dir).expanduser().resolve()
    if is_built(out_dir, params):
        say(f"tiny model already built in {out_dir}")
        return out_dir
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _build_into(work_dir, params, say)
        _move_into_place(work_dir, out_dir, params)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    say(f"tiny model ready in {out_dir}")
    return out_dir


def default_cache_dir() -> Path:
    """``$LLMSERVE_CACHE_DIR``, else ``~/.cache/llmserve``."""
    return Path(os.environ.get("LLMSERVE_CACHE_DIR", "~/.cache/llmserve")).expanduser()


def cached_tiny_model(
    *,
    seed: int = 0,
    num_loras: int = 0,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """The default tiny model for ``seed``/``num_loras``, built once under the cache dir."""
    name = f"tiny-model-s{seed}-l{num_loras}-v{FORMAT_VERSION}"
    out_dir = (cache_dir or default_cache_dir()) / name
    return build_tiny_model(out_dir, seed=seed, num_loras=num_loras, progress=progress)


def is_built(out_dir: Path, params: TinyModelParams) -> bool:
    """True when ``out_dir`` holds a complete model built with ``params``."""
    stamp = out_dir / STAMP_FILE
    try:
        return bool(json.loads(stamp.read_text()) == asdict(params))
    except (OSError, ValueError):
        return False


def lora_dirs(out_dir: Path) -> list[Path]:
    """The adapter directories of a built model, in index order."""
    stamp = json.loads((out_dir / STAMP_FILE).read_text())
    return [out_dir / "loras" / f"lora-{i}" for i in range(int(stamp["num_loras"]))]


def _check_replaceable(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / STAMP_FILE).exists():
        raise FileExistsError(
            f"{out_dir} is not empty and holds no tiny model; refusing to replace"
        )


def _move_into_place(work_dir: Path, out_dir: Path, params: TinyModelParams) -> None:
    (work_dir / STAMP_FILE).write_text(json.dumps(asdict(params), indent=2) + "\n")
    work_dir.chmod(0o755)  # mkdtemp made it private
    if out_dir.exists():
        if is_built(out_dir, params):  # another process finished first
            return
        shutil.rmtree(out_dir)
    try:
        os.rename(work_dir, out_dir)
    except OSError:
        if not is_built(out_dir, params):
            raise


def _build_into(work_dir: Path, params: TinyModelParams, say: Progress) -> None:
    started = time.monotonic()
    say(f"training a byte-level BPE tokenizer (vocab {params.vocab_size})")
    vocab_size = _save_tokenizer(work_dir, params)
    say(f"creating random Llama weights (hidden {params.hidden_size}, {params.num_layers} layers)")
    model = _save_model(work_dir, params, vocab_size)
    for index in range(params.num_loras):
        say(f"writing LoRA adapter {index + 1}/{params.num_loras}")
        _save_lora(model, work_dir / "loras" / f"lora-{index}", params, index)
    say(f"built in {time.monotonic() - started:.1f}s")


def _save_tokenizer(work_dir: Path, params: TinyModelParams) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from llmserve.llm.tiny_corpus import corpus_lines

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(  # type: ignore[no-untyped-call]
        vocab_size=params.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START_TOKEN],
        model_max_length=params.max_position_embeddings,
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(str(work_dir), save_jinja_files=False)
    _make_config_portable(work_dir / "tokenizer_config.json")
    return int(tokenizer.get_vocab_size())


def _make_config_portable(config_path: Path) -> None:
    """Spell the tokenizer config so transformers 4.x (e.g. an SGLang venv) loads it too."""
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.pop("backend", None)
    config.pop("extra_special_tokens", None)
    config["additional_special_tokens"] = [IM_START_TOKEN]
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def _save_model(work_dir: Path, params: TinyModelParams, vocab_size: int) -> Any:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, set_seed

    ids = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=params.hidden_size,
        intermediate_size=params.hidden_size * 4,
        num_hidden_layers=params.num_layers,
        num_attention_heads=params.num_heads,
        num_key_value_heads=params.num_heads,
        head_dim=HEAD_DIM,
        max_position_embeddings=params.max_position_embeddings,
        bos_token_id=ids[BOS_TOKEN],
        eos_token_id=ids[EOS_TOKEN],
        pad_token_id=ids[PAD_TOKEN],
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    set_seed(params.seed)
    # bfloat16 is what vLLM's CPU backend runs in
    model = LlamaForCausalLM(config).bfloat16()  # type: ignore[no-untyped-call]
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=ids[BOS_TOKEN], eos_token_id=ids[EOS_TOKEN], pad_token_id=ids[PAD_TOKEN]
    )
    model.save_pretrained(str(work_dir))
    return model


def _save_lora(model: Any, lora_dir: Path, params: TinyModelParams, index: int) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    set_seed(params.seed * 1000 + index + 1)
    lora_config = LoraConfig(
        r=params.lora_rank,
        lora_alpha=params.lora_rank * 2,
        target_modules=list(LORA_TARGETS),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        init_lora_weights=False,  # random A *and* B, so the adapter changes outputs
    )
    peft_model = get_peft_model(model, lora_config)
    peft_model.save_pretrained(str(lora_dir))
    peft_model.unload()  # drop the LoRA layers again; the base model stays as it was


def make_tiny_model_cli(args: Sequence[str] | None = None) -> int:
    """``llmserve make-tiny-model DIR [--lora N] [--seed S]``; returns an exit code."""
    parser = argparse.ArgumentParser(
        prog="llmserve make-tiny-model",
        description="Build a tiny random-weight Llama model (+ LoRA adapters) for tests and demos.",
    )
    parser.add_argument("dir", type=Path, help="output directory")
    parser.add_argument("--lora", type=int, default=0, metavar="N", help="LoRA adapters to write")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed")
    parsed = parser.parse_args(args)
    try:
        out_dir = build_tiny_model(
            parsed.dir, seed=parsed.seed, num_loras=parsed.lora, progress=_print_progress
        )
    except (FileExistsError, ValueError) as error:
        print(f"error: {error}", flush=True)
        return 2
    for lora_dir in lora_dirs(out_dir):
        print(f"LoRA adapter: {lora_dir}", flush=True)
    return 0


def _print_progress(line: str) -> None:
    print(f"[make-tiny-model] {line}", flush=True)


if __name__ == "__main__":
    raise SystemExit(make_tiny_model_cli())
