"""Chat templates: loading ColossalChat template files or plain Jinja, and rendering conversations.

A ColossalChat template JSON (``chat_template``, ``system_message``, ``end_of_assistant``,
optional ``stop_ids``) is accepted as is, so recipes can point at the files ColossalChat ships.
Rendering always goes through ``tokenizer.apply_chat_template`` so the result matches what the
policy model sees at generation time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import fsspec
import jinja2
import jinja2.ext
import jinja2.nodes

from rmrun.data.pairs import DataError, Message
from rmrun.recipe.schema import is_template_text


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template plus ColossalChat's two extras.

    ``system_message`` is prepended to conversations that have none; ``end_of_assistant`` is the
    token that closes an assistant turn (the reward is read there). ``None`` means "not set":
    no default system message, and the tokenizer's eos token closes assistant turns.
    """

    jinja: str
    system_message: str | None = None
    end_of_assistant: str | None = None


# --------------------------------------------------------------------------- loading


def load_chat_template(source: str | None) -> ChatTemplate | None:
    """Load a ColossalChat template ``.json``, a plain ``.jinja`` file, or take the Jinja
    text itself (a value with ``{{`` or ``{%``); ``None`` gives ``None``.

    Any problem (missing file, bad JSON, wrong field types, Jinja syntax) is a DataError
    naming the file.
    """
    if source is None:
        return None
    if is_template_text(source):
        _check_jinja_syntax(source, path="[data].chat_template")
        return ChatTemplate(jinja=source)
    text = _read_text(source)
    name = source.split("?", 1)[0].lower()
    if name.endswith(".json"):
        template = _parse_colossalchat_template(text, path=source)
    elif name.endswith(".jinja"):
        template = ChatTemplate(jinja=text)
    else:
        raise DataError(
            f"{source}: unknown chat template file type; expected a ColossalChat .json or a .jinja file "
            "(or the template text itself)"
        )
    _check_jinja_syntax(template.jinja, path=source)
    return template


def _read_text(path_or_url: str) -> str:
    try:
        with fsspec.open(path_or_url, mode="rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise DataError(f"{path_or_url}: file not found") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path_or_url}: not UTF-8 ({error.reason})") from None


def _parse_colossalchat_template(text: str, *, path: str) -> ChatTemplate:
    """The JSON object ColossalChat writes; ``stop_ids`` is for generation and is ignored here."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: invalid JSON: {error.msg} (column {error.colno})") from None
    if not isinstance(document, dict):
        raise DataError(f'{path}: expected a JSON object with a "chat_template" key')
    if "chat_template" not in document:
        raise DataError(f'{path}: missing key "chat_template"')
    jinja = _optional_nonempty_str(document, "chat_template", path=path)
    if jinja is None:
        raise DataError(f'{path}: "chat_template" must be a non-empty string')
    return ChatTemplate(
        jinja=jinja,
        system_message=_optional_nonempty_str(document, "system_message", path=path),
        end_of_assistant=_optional_nonempty_str(document, "end_of_assistant", path=path),
    )


def _optional_nonempty_str(document: dict, key: str, *, path: str) -> str | None:
    """A string field that may be absent or null; an empty string means "not set" as well."""
    value = document.get(key)  # optional field: absence is meaningful, not an error
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f'{path}: "{key}" must be a string')
    return value or None


class _GenerationTag(jinja2.ext.Extension):
    """Parses transformers' ``{% generation %}...{% endgeneration %}`` block (which marks the
    assistant's tokens) as a plain block: enough to compile a template, nothing to track."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def compile_jinja(jinja: str) -> jinja2.Template:
    """Compile a chat template as ``tokenizer.apply_chat_template`` does (transformers'
    sandboxed environment: trimmed blocks, loop controls, ``{% generation %}``), without
    importing transformers, which imports torch: ``rmrun check`` compiles templates too.
    ``tests/unit/test_recipe_gaps.py`` holds it to transformers' compiler."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    return environment.from_string(jinja)


def _check_jinja_syntax(jinja: str, *, path: str) -> None:
    """Compile the template now so a syntax error names the file instead of failing mid-tokenization."""
    try:
        compile_jinja(jinja)
    except jinja2.TemplateSyntaxError as error:
        raise DataError(
            f"{path}: invalid Jinja chat template (template line {error.lineno}): {error.message}"
        ) from None


# --------------------------------------------------------------------------- using a template


# Encoders score plain text; their tokenizers rarely carry a chat template.
ENCODER_DEFAULT_TEMPLATE = "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"


def resolve_chat_template(tokenizer, template: ChatTemplate | None, *, family: str = "decoder") -> ChatTemplate:
    """The template to render with: the given one, else the tokenizer's own ``chat_template``,
    else (encoders only) one "role: content" line per message."""
    if template is not None:
        return template
    own = tokenizer.chat_template
    if isinstance(own, dict):
        # Tokenizers with several named templates mark the one for plain chat as "default".
        own = own.get("default")
    if own:
        return ChatTemplate(jinja=own)
    if family == "encoder":
        return ChatTemplate(jinja=ENCODER_DEFAULT_TEMPLATE)
    raise DataError(
        f"{tokenizer.name_or_path or 'tokenizer'}: the tokenizer has no chat_template; "
        "set data.chat_template to a ColossalChat template .json, a .jinja file or the template text"
    )


def end_of_assistant_token(tokenizer, template: ChatTemplate) -> str | None:
    """The token that closes an assistant turn: the template's ``end_of_assistant``, else eos.

    ``None`` when there is neither: the reward is then read at the last token of the
    rendered conversation (trailing whitespace removed).
    """
    return template.end_of_assistant or tokenizer.eos_token or None


def with_system_message(messages: Sequence[Message], *, template: ChatTemplate) -> Sequence[Message]:
    """Prepend the template's system message when the conversation has none, as ColossalChat does."""
    if template.system_message is None or (messages and messages[0].role == "system"):
        return messages
    return (Message("system", template.system_message), *messages)


def render_conversations(
    tokenizer,
    conversations: Sequence[Sequence[Message]],
    *,
    template: ChatTemplate,
    sources: Sequence[str] | None = None,
) -> list[str]:
    """Render whole conversations (prompt + response) to text with the chat template.

    ``sources`` (one per conversation) lets a template error, such as a template's own
    ``raise_exception`` on unexpected roles, be reported against the offending row.
    """
    if not conversations:
        return []
    chats = [[message._asdict() for message in with_system_message(c, template=template)] for c in conversations]
    try:
        return tokenizer.apply_chat_template(chats, chat_template=template.jinja, tokenize=False)
    except jinja2.TemplateError:
        # Re-render one by one to name the conversation the template rejected.
        for position, chat in enumerate(chats):
            try:
                tokenizer.apply_chat_template(chat, chat_template=template.jinja, tokenize=False)
            except jinja2.TemplateError as error:
                where = sources[position] if sources is not None else f"conversation {position}"
                raise DataError(f"{where}: the chat template failed to render this conversation: {error}") from None
        raise
