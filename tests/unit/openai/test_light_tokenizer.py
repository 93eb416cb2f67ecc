"""LightTokenizer renders and tokenises exactly as transformers' AutoTokenizer does.

Every template here is written for this test; each case compares the rendered text and
the token ids (with and without special tokens) with the real transformers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jinja2
import pytest

from llmserve.openai.tokenizer import LightTokenizer
from tests.fixtures_engines import cached_tiny_model

transformers = pytest.importorskip("transformers")

# A template using every feature transformers gives templates.
FULL = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' %}
{%- set system = messages[0]['content'] %}{% set rest = messages[1:] %}
{%- else %}{% set system = 'You are helpful. Year ' + strftime_now('%Y') %}
{%- set rest = messages %}{% endif %}
<|im_start|>system
{{ system }}
{% if tools %}
Tools:
{% for tool in tools %}
{{ tool | tojson }}
{{ tool['function'] | tojson(indent=2) }}
{% endfor %}
{% endif %}
{% if documents %}
{% for doc in documents %}[{{ loop.index }}] {{ doc['title'] }}: {{ doc['text'] }}
{% endfor %}
{% endif %}
{% if enable_thinking is defined and not enable_thinking %}(no thinking){% endif %}
<|im_end|>
{% for message in rest %}
{% if message['role'] not in ['user', 'assistant', 'tool'] %}
{{ raise_exception('Unknown role: ' + message['role']) }}
{% endif %}
{% if message['content'] == 'SKIP' %}{% continue %}{% endif %}
{% if message['content'] == 'STOP' %}{% break %}{% endif %}
<|im_start|>{{ message['role'] }}
{% if message['content'] is string %}
{% if message['role'] == 'assistant' %}
{% generation %}{{ message['content'] }}{% endgeneration %}{{ eos_token }}
{% else %}{{ message['content'] }}<|im_end|>
{% endif %}
{% else %}
{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}
{%- endif %}{% endfor %}<|im_end|>
{% endif %}
{% endfor %}
{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

TOOL_USE = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
            "TOOLS={{ tools | tojson(sort_keys=True) }}{{ eos_token }}")
DEFAULT = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{{ pad_token }}"
SPACED = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}"
          "<|im_end|>\n{% endfor %}")

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather <now> & \"later\" — é",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
DOCS = [{"title": "Doc A", "text": "alpha"}, {"title": "Doc B", "text": "beta <b>"}]
CHAT = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there, what's the weather in Zürich?"},
        {"role": "assistant", "content": "Let me check."},
        {"role": "tool", "content": "sunny"},
        {"role": "user", "content": [{"type": "text", "text": "And "},
                                     {"type": "image_url", "image_url": {"url": "x"}},
                                     {"type": "text", "text": "tomorrow?"}]}]


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return cached_tiny_model()


def make_dir(base: Path, tiny: Path, config_changes: dict[str, Any],
             files: dict[str, str] | None = None) -> Path:
    """A tokenizer directory: the tiny model's tokenizer.json, an edited config, files."""
    base.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny / "tokenizer.json", base / "tokenizer.json")
    config = json.loads((tiny / "tokenizer_config.json").read_text())
    config.update(config_changes)
    config = {k: v for k, v in config.items() if v is not None}
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    for name, text in (files or {}).items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_text(text)
    return base


def load_both(model_dir: Path) -> tuple[LightTokenizer, Any]:
    return (LightTokenizer.from_dir(model_dir),
            transformers.AutoTokenizer.from_pretrained(str(model_dir)))


def assert_same(light: LightTokenizer, hf: Any, messages: list[dict[str, Any]],
                **options: Any) -> str:
    text = light.apply_chat_template(messages, tokenize=False, **options)
    assert text == hf.apply_chat_template(messages, tokenize=False, **options)
    assert isinstance(text, str)
    for special in (False, True):
        assert light(text, add_special_tokens=special)["input_ids"] \
            == hf(text, add_special_tokens=special)["input_ids"]
    assert light.apply_chat_template(messages, **options) \
        == hf(text, add_special_tokens=False)["input_ids"]
    return text


def test_the_tiny_models_own_template(tiny_dir: Path) -> None:
    light, hf = load_both(tiny_dir)
    assert light.special_tokens_map == hf.special_tokens_map
    for generation in (True, False):
        text = assert_same(light, hf, CHAT[:4], add_generation_prompt=generation)
        assert text.endswith("<|im_start|>assistant\n") is generation
    assert_same(light, hf, CHAT[:3], continue_final_message=True)


def test_every_template_feature(tmp_path: Path, tiny_dir: Path) -> None:
    light, hf = load_both(make_dir(tmp_path / "full", tiny_dir, {"chat_template": FULL}))
    for options in ({}, {"add_generation_prompt": True}, {"tools": TOOLS},
                    {"documents": DOCS, "add_generation_prompt": True},
                    {"tools": TOOLS, "enable_thinking": False},
                    {"eos_token": "<|pad|>"}):  # kwargs override special tokens
        text = assert_same(light, hf, CHAT, **options)
        assert text.startswith("<|bos|>")
    assert "get_weather" in assert_same(light, hf, CHAT, tools=TOOLS)
    assert "Doc B: beta <b>" in assert_same(light, hf, CHAT, documents=DOCS)
    assert "Year " in assert_same(light, hf, CHAT[1:])  # strftime_now
    skip_stop = [CHAT[1], {"role": "user", "content": "SKIP"}, CHAT[2],
                 {"role": "user", "content": "STOP"}, CHAT[3]]
    text = assert_same(light, hf, skip_stop)
    assert "SKIP" not in text and "sunny" not in text and "Let me check." in text


def test_continue_final_message(tmp_path: Path, tiny_dir: Path) -> None:
    light, hf = load_both(make_dir(tmp_path / "full", tiny_dir, {"chat_template": FULL}))
    partial = [*CHAT[:2], {"role": "user", "content": "Tell me a sto"}]
    assert assert_same(light, hf, partial, continue_final_message=True).endswith("a sto")
    parts = [*CHAT[:2], {"role": "user", "content": [{"type": "text", "text": "one"},
                                                     {"type": "text", "text": "two"}]}]
    assert assert_same(light, hf, parts, continue_final_message=True).endswith("two")
    # a template that trims the content: cut before the trimmed whitespace
    light, hf = load_both(make_dir(tmp_path / "spaced", tiny_dir, {"chat_template": SPACED}))
    assert assert_same(light, hf, [{"role": "user", "content": "hello  "}],
                       continue_final_message=True).endswith("hello")


def test_errors_are_raised_where_transformers_raises(tmp_path: Path, tiny_dir: Path) -> None:
    light, hf = load_both(make_dir(tmp_path / "full", tiny_dir, {"chat_template": FULL}))
    bad = [{"role": "wizard", "content": "hi"}]
    for tokenizer in (light, hf):
        with pytest.raises(jinja2.TemplateError, match="Unknown role: wizard"):
            tokenizer.apply_chat_template(bad, tokenize=False)
        with pytest.raises(ValueError):
            tokenizer.apply_chat_template(CHAT[:2], tokenize=False, continue_final_message=True,
                                          add_generation_prompt=True)
        with pytest.raises(ValueError):
            tokenizer.apply_chat_template([], tokenize=False)


def test_a_list_of_named_templates(tmp_path: Path, tiny_dir: Path) -> None:
    named = [{"name": "default", "template": DEFAULT}, {"name": "tool_use", "template": TOOL_USE}]
    light, hf = load_both(make_dir(tmp_path / "named", tiny_dir, {"chat_template": named}))
    assert assert_same(light, hf, CHAT[1:3]).endswith("<|pad|>")
    assert "TOOLS=" in assert_same(light, hf, CHAT[1:3], tools=TOOLS)
    assert "TOOLS=" in assert_same(light, hf, CHAT[1:3], chat_template="tool_use")
    assert "TOOLS=" not in assert_same(light, hf, CHAT[1:3], chat_template="default")
    no_default = [named[1]]
    light, hf = load_both(make_dir(tmp_path / "nodef", tiny_dir, {"chat_template": no_default}))
    for tokenizer in (light, hf):
        with pytest.raises(ValueError, match="no default"):
            tokenizer.apply_chat_template(CHAT[1:3], tokenize=False)


def test_template_files_take_priority_over_the_config(tmp_path: Path, tiny_dir: Path) -> None:
    light, hf = load_both(make_dir(tmp_path / "file", tiny_dir, {"chat_template": DEFAULT},
                                   {"chat_template.jinja": FULL}))
    assert_same(light, hf, CHAT, tools=TOOLS, add_generation_prompt=True)
    assert light.chat_template == FULL
    light, hf = load_both(make_dir(tmp_path / "files", tiny_dir, {"chat_template": None},
                                   {"chat_template.jinja": DEFAULT,
                                    "additional_chat_templates/tool_use.jinja": TOOL_USE}))
    assert assert_same(light, hf, CHAT[1:3]).endswith("<|pad|>")
    assert "TOOLS=" in assert_same(light, hf, CHAT[1:3], tools=TOOLS)


def test_special_tokens_in_added_token_form_and_new_ones(tmp_path: Path, tiny_dir: Path) -> None:
    def added(content: str) -> dict[str, Any]:
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
                "rstrip": False, "single_word": False, "special": True}

    template = ("{{ bos_token }}{% for m in messages %}{{ image_token }}{{ m['content'] }}"
                "{{ eos_token }}{% endfor %}{{ sep_token }}")
    model = make_dir(tmp_path / "added", tiny_dir, {
        "chat_template": template, "bos_token": added("<|bos|>"), "eos_token": added("<|eos|>"),
        "image_token": "<|image|>", "sep_token": added("<|sep|>")})
    light, hf = load_both(model)
    assert light.special_tokens_map == hf.special_tokens_map
    text = assert_same(light, hf, CHAT[1:3])
    assert text.startswith("<|bos|><|image|>") and text.endswith("<|eos|><|sep|>")
    ids = light(text, add_special_tokens=False)["input_ids"]
    assert hf.convert_tokens_to_ids("<|sep|>") == ids[-1]  # new tokens are single tokens
