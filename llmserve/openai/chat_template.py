"""A model's chat template, found and rendered the way ``transformers`` does, without it.

Finding (as ``AutoTokenizer.from_pretrained`` on a local directory): ``chat_template.jinja``
is the default template and ``additional_chat_templates/<name>.jinja`` are named ones; when
any such file exists they replace the ``chat_template`` entry of ``tokenizer_config.json``,
which is either one template (a string) or a list of ``{"name", "template"}`` entries.
Choosing (``get_chat_template``): with named templates, ``tool_use`` when tools are given
and it exists, else ``default``; a ``chat_template`` argument is a name or template text.

Rendering (``apply_chat_template(..., tokenize=False)``): Jinja's
``ImmutableSandboxedEnvironment`` with ``trim_blocks``, ``lstrip_blocks``, loop controls
and the ``{% generation %}`` tag; a ``tojson`` filter that does not escape HTML;
``raise_exception`` and ``strftime_now``; the tokenizer's special tokens, ``tools``,
``documents``, ``add_generation_prompt`` and the caller's extra variables; and
``continue_final_message`` cutting the text after the final message's content.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE_FILE = "chat_template.jinja"
TEMPLATE_DIR = "additional_chat_templates"
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "

ChatTemplates = str | dict[str, str] | None


class ChatTemplateError(ValueError):
    """The conversation cannot be rendered with this template (as transformers raises)."""


def find_chat_templates(model_dir: Path, config: Mapping[str, Any]) -> ChatTemplates:
    """The directory's template(s): one string, a dict of named ones, or None."""
    files: dict[str, str] = {}
    default = model_dir / TEMPLATE_FILE
    if default.is_file():
        files["default"] = default.read_text(encoding="utf-8")
    extra = model_dir / TEMPLATE_DIR
    if extra.is_dir():
        for path in sorted(extra.glob("*.jinja")):
            files[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    if len(files) == 1 and "default" in files:
        return files["default"]
    if files:
        return files
    entry = config.get("chat_template")
    if isinstance(entry, list | tuple):
        return {str(item["name"]): str(item["template"]) for item in entry}
    return entry if isinstance(entry, str) else None


def choose_template(templates: ChatTemplates, chat_template: str | None,
                    tools: Sequence[Any] | None) -> str:
    """The template text to render, by transformers' ``get_chat_template`` rules."""
    if isinstance(templates, dict):
        if chat_template is not None and chat_template in templates:
            return templates[chat_template]
        if chat_template is None:
            if tools is not None and "tool_use" in templates:
                return templates["tool_use"]
            if "default" in templates:
                return templates["default"]
            raise ChatTemplateError(
                "This model has multiple chat templates with no default specified; available "
                f"template names are {sorted(templates)}")
        return chat_template
    if chat_template is not None:
        return chat_template
    if templates is None:
        raise ChatTemplateError("this tokenizer has no chat template")
    return templates


def render_chat(template: str, messages: Sequence[Mapping[str, Any]], *,
                tools: Sequence[Any] | None = None,
                documents: Sequence[Any] | None = None,
                add_generation_prompt: bool = False,
                continue_final_message: bool | str = False,
                variables: Mapping[str, Any] | None = None) -> str:
    """The conversation as text, exactly as transformers renders one conversation."""
    if not messages:
        raise ChatTemplateError("Cannot apply chat template to an empty conversation.")
    if continue_final_message and add_generation_prompt:
        raise ChatTemplateError(
            "continue_final_message and add_generation_prompt are not compatible")
    if tools is not None and not all(isinstance(tool, dict) for tool in tools):
        raise ChatTemplateError("Tools should be JSON schemas (dicts)")
    if documents is not None and not all(isinstance(doc, dict) for doc in documents):
        raise ChatTemplateError("Documents should be a list of dicts with 'title' and 'text' keys")
    chat: Any = messages
    final_text = ""
    if continue_final_message:
        field = continue_final_message if isinstance(continue_final_message, str) else "content"
        chat, final_text = _tag_final_message(list(messages), field, template)
    rendered = _compile(template).render(
        messages=chat, tools=list(tools) if tools is not None else None,
        documents=documents, add_generation_prompt=add_generation_prompt,
        **dict(variables or {}))
    if continue_final_message:
        rendered = _cut_at_tag(rendered, final_text)
    return rendered


def _tag_final_message(chat: list[Any], field: str, template: str) -> tuple[list[Any], str]:
    chat = copy.deepcopy(chat)
    final = chat[-1].get(field) if isinstance(chat[-1], Mapping) else None
    if final is None:
        raise ChatTemplateError(
            f'continue_final_message is set but the final message has no "{field}" to continue')
    if field not in template:
        raise ChatTemplateError(f'continue_final_message is set to "{field}" but this is not '
                                "an accepted field in the chat_template")
    if isinstance(final, list | tuple):
        for block in reversed(final):
            if "text" in block:
                text = block["text"]
                block["text"] = text + _CONTINUE_TAG
                return chat, str(text)
        raise ChatTemplateError("continue_final_message is set but we could not find any text "
                                "to continue in the final message")
    chat[-1][field] = final + _CONTINUE_TAG
    return chat, str(final)


def _cut_at_tag(rendered: str, final_text: str) -> str:
    tag = _CONTINUE_TAG.strip()
    if final_text.strip() not in rendered or tag not in rendered:
        raise ChatTemplateError("continue_final_message is set but the final message does not "
                                "appear in the chat after applying the chat template")
    at = rendered.rindex(tag)
    if rendered[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
        return rendered[:at]
    return rendered[:at].rstrip()


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: renders its body (transformers uses it
    to mark assistant tokens, which routing does not need)."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.CallBlock:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_body")
        block = jinja2.nodes.CallBlock(call, [], [], body)
        block.set_lineno(lineno)
        return block

    def _body(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                      separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)
