"""Render an OpenAI-style conversation into a prompt string with a model's chat template.

The template normally comes from the GGUF metadata key ``tokenizer.chat_template``
and is rendered exactly as Hugging Face ``transformers`` renders it, so a model
sees the prompt format it was trained on:

* ``jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True,
  lstrip_blocks=True)`` with the ``loopcontrols`` extension (templates come from
  model files, i.e. untrusted input, so they run sandboxed);
* a ``tojson`` filter that does *not* HTML-escape (``json.dumps`` with
  ``ensure_ascii=False``; ``indent``/``separators``/``sort_keys`` supported);
* globals ``raise_exception(msg)`` (raises :class:`TemplateError`) and
  ``strftime_now(fmt)`` (local time, as Llama 3.x templates expect);
* a no-op ``{% generation %}...{% endgeneration %}`` tag (HF uses it to mark
  assistant tokens for training masks; it must parse but changes no output);
* variables ``messages``, ``tools``, ``add_generation_prompt``, ``bos_token``,
  ``eos_token`` and any extra keyword arguments.

One deliberate difference from HF: touching an unsafe attribute (``__class__``,
``_private``, ``list.append`` …) raises :class:`TemplateError` instead of
silently rendering as an empty string, so a hostile template fails loudly.

Built-in fallback (:data:`CHATML_TEMPLATE`, used when a model has no template):
ChatML in the Hermes / Qwen 2.5 tool-calling style::

    <|im_start|>system
    {system content}

    # Tools
    ... <tools>
    {"type": "function", "function": {...}}
    </tools> ...<|im_end|>
    <|im_start|>user name=alice
    Hi<|im_end|>
    <|im_start|>assistant
    {content}
    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call><|im_end|>
    <|im_start|>tool
    <tool_response>
    {tool result}
    </tool_response><|im_end|>
    <|im_start|>assistant

* ``name`` is rendered as `` name=...`` after the role (OpenAI's ChatML convention);
* the ``# Tools`` preamble appears only when ``tools`` is non-empty; it is appended
  to the first system message, or forms a system message of its own;
* tool-call ``arguments`` are always rendered with ``tojson``: a dict becomes a JSON
  object, an unparseable string becomes a JSON string, so the line stays valid JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar, NoReturn

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

__all__ = ["CHATML_TEMPLATE", "ChatTemplate", "TemplateError"]


CHATML_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages and messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] + '\n\n' }}
    {%- endif %}
    {{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' }}
    {{- 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
    {%- for tool in tools %}
        {{- '\n' + tool | tojson }}
    {%- endfor %}
    {{- '\n</tools>\n\nFor each function call, return a json object with function name and ' }}
    {{- 'arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n' }}
    {{- '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if not (tools and loop.first and message['role'] == 'system') %}
        {{- '<|im_start|>' + message['role'] }}
        {%- if message['name'] %}
            {{- ' name=' + message['name'] }}
        {%- endif %}
        {{- '\n' }}
        {%- if message['role'] == 'tool' %}
            {{- '<tool_response>\n' + (message['content'] or '') + '\n</tool_response>' }}
        {%- else %}
            {{- message['content'] or '' }}
            {%- if message['role'] == 'assistant' and message['tool_calls'] %}
                {%- for tool_call in message['tool_calls'] %}
                    {%- set call = tool_call['function'] or tool_call %}
                    {%- if message['content'] or not loop.first %}
                        {{- '\n' }}
                    {%- endif %}
                    {{- '<tool_call>\n{"name": ' + call['name'] | tojson }}
                    {{- ', "arguments": ' + call['arguments'] | tojson + '}\n</tool_call>' }}
                {%- endfor %}
            {%- endif %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
"""Jinja source of the built-in ChatML fallback template (see the module docstring)."""


class TemplateError(ValueError):
    """A chat template failed to compile or render (also raised by ``raise_exception``)."""


def _raise_exception(message: str) -> NoReturn:
    """Let templates reject a conversation they cannot format (HF's ``raise_exception``)."""
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    """Give templates the current date, e.g. Llama 3.1's "Today Date" line."""
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """Serialise like HF: Jinja's own ``tojson`` HTML-escapes ``<>&'``, which corrupts prompts."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _GenerationTag(jinja2.ext.Extension):
    """Accept HF's ``{% generation %}`` block (a training-mask marker) and render its body as is."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        """Parse up to ``endgeneration`` and emit the body unchanged."""
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


class _Sandbox(ImmutableSandboxedEnvironment):
    """HF's sandbox, except that unsafe attribute access raises instead of rendering ``""``."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        """Fail loudly: a template reaching for ``__class__`` & co. is broken or hostile."""
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )


def _make_env() -> jinja2.Environment:
    """Build the environment HF uses for chat templates (plus our loud sandbox)."""
    env = _Sandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols, _GenerationTag],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class ChatTemplate:
    """A compiled chat template; compile once per model, render once per request."""

    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        """Compile ``source`` (``None`` or blank -> the built-in ChatML fallback)."""
        self._builtin = source is None or not source.strip()
        self.source: str = CHATML_TEMPLATE if self._builtin else str(source)
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._env = _make_env()
        try:
            ast = self._env.parse(self.source)
            self._template = self._env.from_string(ast)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"chat template does not compile: {exc.message} (line {exc.lineno})"
            ) from exc
        except jinja2.TemplateError as exc:
            raise TemplateError(f"chat template does not compile: {exc}") from exc
        self._handles_tools = "tools" in jinja2.meta.find_undeclared_variables(ast)

    @property
    def is_builtin(self) -> bool:
        """True when the model had no template and the ChatML fallback is in use."""
        return self._builtin

    @property
    def handles_tools(self) -> bool:
        """True if the template reads ``tools``; otherwise the caller must inject tool prompts."""
        return self._handles_tools

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """Render the conversation; every failure surfaces as :class:`TemplateError`."""
        context: dict[str, Any] = {"bos_token": self.bos_token, "eos_token": self.eos_token}
        context.update(extra)
        context.update(
            messages=messages, tools=tools or None, add_generation_prompt=add_generation_prompt
        )
        return _guarded(lambda: self._template.render(**context))

    def __repr__(self) -> str:
        """Short form for logs: which template and whether it does tools."""
        kind = "builtin ChatML" if self._builtin else f"{len(self.source)} chars"
        return f"ChatTemplate({kind}, handles_tools={self._handles_tools})"


def _guarded(render: Callable[[], str]) -> str:
    """Turn anything a template can throw into a readable :class:`TemplateError`."""
    try:
        return render()
    except TemplateError:
        raise
    except SecurityError as exc:
        raise TemplateError(f"chat template blocked by sandbox: {exc}") from exc
    except jinja2.TemplateError as exc:
        raise TemplateError(f"chat template failed: {exc}") from exc
    except Exception as exc:
        raise TemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from exc
