"""Chat template rendering: real-world templates give byte-exact prompts, the sandbox holds."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import pytest

from chatd.chat.template import CHATML_TEMPLATE, ChatTemplate, TemplateError

# The template stored in SmolLM2-135M-Instruct's GGUF metadata, verbatim.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Meta-Llama-3-8B-Instruct.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

# Mistral-7B-Instruct-v0.1 (Llama-2 style, rejects non-alternating roles).
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)

# Qwen2.5-Instruct: iterates `tools`, renders tool_calls and groups tool results.
QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\
You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and \
arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \
\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. \
You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) \
or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
WEATHER_TOOL_JSON = (
    '{"type": "function", "function": {"name": "get_weather", "description": "Get the weather", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}'
)

TOOL_CONVERSATION: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Paris and Köln?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Köln"}},
            },
        ],
    },
    {"role": "tool", "content": "22C", "tool_call_id": "call_1"},
    {"role": "tool", "content": "18C", "tool_call_id": "call_2"},
]

TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    + WEATHER_TOOL_JSON
    + "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
)


# --- the bundled model's template -------------------------------------------------------


def test_smollm2_without_system_adds_default_system() -> None:
    t = ChatTemplate(SMOLLM2_TEMPLATE)
    out = t.render([{"role": "user", "content": "Hi!"}])
    assert out == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    )
    assert not t.is_builtin
    assert not t.handles_tools


def test_smollm2_with_system_and_history_no_generation_prompt() -> None:
    t = ChatTemplate(SMOLLM2_TEMPLATE)
    msgs = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    out = t.render(msgs, add_generation_prompt=False)
    assert out == (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
    )


def test_render_is_repeatable_and_compiled_once() -> None:
    t = ChatTemplate(SMOLLM2_TEMPLATE)
    compiled = t._template
    msgs = [{"role": "user", "content": "a"}]
    assert t.render(msgs) == t.render(msgs)
    assert t._template is compiled


# --- other real-world templates ---------------------------------------------------------


def test_llama3_uses_bos_token_and_trim() -> None:
    t = ChatTemplate(LLAMA3_TEMPLATE, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    msgs = [{"role": "system", "content": "  Sys. "}, {"role": "user", "content": "Hello\n"}]
    assert t.render(msgs) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nSys.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_mistral_renders_alternating_conversation() -> None:
    t = ChatTemplate(MISTRAL_TEMPLATE, bos_token="<s>", eos_token="</s>")
    msgs = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    assert t.render(msgs) == "<s>[INST] Hi [/INST]Hello</s>[INST] Bye [/INST]"


def test_raise_exception_surfaces_as_template_error() -> None:
    t = ChatTemplate(MISTRAL_TEMPLATE, bos_token="<s>", eos_token="</s>")
    with pytest.raises(TemplateError, match="roles must alternate"):
        t.render([{"role": "assistant", "content": "x"}])
    with pytest.raises(TemplateError, match="Only user and assistant roles"):
        t.render([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])


def test_qwen25_tools_and_tool_calls() -> None:
    t = ChatTemplate(QWEN25_TEMPLATE)
    assert t.handles_tools
    out = t.render(TOOL_CONVERSATION, tools=[WEATHER_TOOL])
    assert out == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        "\n\n" + TOOLS_PREAMBLE + "<|im_start|>user\nWeather in Paris and Köln?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n'
        '{"name": "get_weather", "arguments": {"city": "Köln"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n22C\n</tool_response>\n<tool_response>\n18C\n"
        "</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )


def test_qwen25_without_tools() -> None:
    t = ChatTemplate(QWEN25_TEMPLATE)
    out = t.render([{"role": "user", "content": "Hi"}], tools=None)
    assert out == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    # An empty tools list is treated as no tools (HF templates test `tools is not none`).
    assert t.render([{"role": "user", "content": "Hi"}], tools=[]) == out


def test_strftime_now_and_extra_kwargs() -> None:
    src = "{{ strftime_now('%Y-%m-%d') }}|{{ custom }}|{{ bos_token }}"
    out = ChatTemplate(src, bos_token="<s>").render([], custom="x")
    date, custom, bos = out.split("|")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date)
    assert date[:4] in {str(datetime.now().year), str(datetime.now().year - 1)}
    assert (custom, bos) == ("x", "<s>")
    # extra kwargs may override the special tokens, as in HF
    assert ChatTemplate("{{ bos_token }}", bos_token="<s>").render([], bos_token="B") == "B"


def test_tojson_does_not_html_escape_and_supports_indent() -> None:
    t = ChatTemplate("{{ x | tojson }}|{{ x | tojson(indent=2) }}")
    out = t.render([], x={"a": "<b>&'ü"})
    assert out == '{"a": "<b>&\'ü"}|{\n  "a": "<b>&\'ü"\n}'


def test_trim_blocks_lstrip_blocks_and_loopcontrols() -> None:
    src = (
        "{% for m in messages %}\n"
        "    {% if loop.index > 2 %}{% break %}{% endif %}\n"
        "{{ m.content }};\n"
        "{% endfor %}"
    )
    msgs = [{"role": "user", "content": c} for c in "abc"]
    assert ChatTemplate(src).render(msgs) == "a;\nb;\n"


def test_generation_tag_is_accepted() -> None:
    src = "{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}{% endfor %}"
    assert ChatTemplate(src).render([{"role": "assistant", "content": "x"}]) == "[x]"


def test_handles_tools_detection() -> None:
    assert ChatTemplate("{% if tools %}{{ tools | length }}{% endif %}").handles_tools
    assert not ChatTemplate("{# tools are not supported #}{{ messages | length }}").handles_tools
    assert ChatTemplate(None).handles_tools


# --- failures and the sandbox -----------------------------------------------------------


@pytest.mark.parametrize(
    "src",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__ }}",
        "{{ raise_exception.__globals__ }}",
        "{{ messages['__class__'] }}",
        "{{ messages.append(1) }}",
        "{% set d = {} %}{{ d.update({'a': 1}) }}",
    ],
)
def test_sandbox_blocks_unsafe_access(src: str) -> None:
    with pytest.raises(TemplateError, match=r"unsafe|sandbox"):
        ChatTemplate(src).render([{"role": "user", "content": "x"}])


def test_compile_error_is_template_error() -> None:
    with pytest.raises(TemplateError, match=r"does not compile.*line 2"):
        ChatTemplate("ok\n{% for m in messages %}{{ m }")


def test_render_errors_are_template_errors() -> None:
    with pytest.raises(TemplateError, match="undefined"):
        ChatTemplate("{{ foo.bar }}").render([])
    with pytest.raises(TemplateError, match="TypeError"):
        ChatTemplate("{{ 1 + 'a' }}").render([])
    # a message without the key the template needs
    with pytest.raises(TemplateError):
        ChatTemplate(SMOLLM2_TEMPLATE).render([{"role": "user"}])


# --- built-in ChatML fallback -----------------------------------------------------------


def test_builtin_plain_conversation() -> None:
    t = ChatTemplate(None)
    assert t.is_builtin
    assert t.source == CHATML_TEMPLATE
    msgs = [
        {"role": "system", "content": "Sys"},
        {"role": "user", "content": "Hi", "name": "alice"},
        {"role": "assistant", "content": "Hello"},
    ]
    assert t.render(msgs) == (
        "<|im_start|>system\nSys<|im_end|>\n<|im_start|>user name=alice\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>assistant\n"
    )
    assert t.render(msgs[:1], add_generation_prompt=False) == "<|im_start|>system\nSys<|im_end|>\n"
    assert ChatTemplate("   ").is_builtin


def test_builtin_tools_without_system_message() -> None:
    t = ChatTemplate(None)
    out = t.render(TOOL_CONVERSATION, tools=[WEATHER_TOOL])
    assert out == (
        "<|im_start|>system\n" + TOOLS_PREAMBLE + "<|im_start|>user\nWeather in Paris and Köln?"
        "<|im_end|>\n<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n'
        '{"name": "get_weather", "arguments": {"city": "Köln"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>tool\n<tool_response>\n22C\n</tool_response><|im_end|>\n"
        "<|im_start|>tool\n<tool_response>\n18C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_builtin_tools_merge_into_system_message() -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    out = ChatTemplate(None).render(msgs, tools=[WEATHER_TOOL], add_generation_prompt=False)
    assert out == (
        "<|im_start|>system\nBe brief.\n\n" + TOOLS_PREAMBLE + "<|im_start|>user\nHi<|im_end|>\n"
    )


def test_builtin_tool_call_with_content_and_unparsed_arguments() -> None:
    msgs = [
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "c",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"broken'},
                }
            ],
        }
    ]
    out = ChatTemplate(None).render(msgs, add_generation_prompt=False)
    assert out == (
        "<|im_start|>assistant\nLet me check.\n<tool_call>\n"
        '{"name": "f", "arguments": "{\\"broken"}\n</tool_call><|im_end|>\n'
    )


def test_builtin_none_content() -> None:
    msgs = [{"role": "assistant", "content": None}]
    assert ChatTemplate(None).render(msgs, add_generation_prompt=False) == (
        "<|im_start|>assistant\n<|im_end|>\n"
    )


def test_only_short_plain_text_conversations_are_tokenized_on_the_event_loop() -> None:
    """Short chats skip the thread hop; anything that may take a millisecond or more
    (long text, tools, content parts) still goes off the event loop."""
    from chatd.chat.service import INLINE_CHARS, _quick_to_tokenize

    short = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert _quick_to_tokenize(short, [])
    assert _quick_to_tokenize([{"role": "assistant", "content": None}], [])
    assert not _quick_to_tokenize([{"role": "user", "content": "x" * (INLINE_CHARS + 1)}], [])
    halves = [{"role": "user", "content": "x" * (INLINE_CHARS // 2 + 1)}] * 2
    assert not _quick_to_tokenize(halves, [])
    assert not _quick_to_tokenize(short, [{"type": "function", "function": {"name": "f"}}])
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert not _quick_to_tokenize(parts, [])
