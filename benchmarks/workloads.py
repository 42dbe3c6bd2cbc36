"""Prompts the benchmarks send besides the load generator's default story request.

- `REPEAT_PROMPT`: speculative decoding's case. The answer copies ~300 words of the
  prompt, so prompt-lookup drafts are right most of the time.
- `fresh_prompt(tokens, seed)`: about `tokens` tokens of random words, different per
  seed, so no prefix cache helps either server: a TTFT measured on it is the full
  prompt processing.
"""

from __future__ import annotations

from benchmarks.scenarios import text

REPEAT_TEXT = """\
The harbour town woke slowly on winter mornings. Before the sun rose over the eastern \
cliffs, the baker lit his ovens and the smell of bread drifted down the narrow streets \
toward the water. Fishermen checked their nets by lantern light, calling to one another \
in low voices so as not to wake the children. The old lighthouse at the end of the pier \
still turned its lamp, although the new beacon on the headland had made it unnecessary \
years ago. Nobody in the town could remember who had decided to keep it running, but \
nobody wanted to be the one who switched it off.

By eight o'clock the market square was full. Farmers from the valley sold cheese, apples \
and jars of honey from the backs of their carts, and the schoolteacher bought the same \
loaf of dark rye bread every day. Children ran between the stalls with their coats \
unbuttoned, ignoring their parents' warnings about the cold. At the corner of the square \
a woman played the violin for coins, always beginning with the same slow tune and ending \
with a fast dance that made the farmers tap their boots.

In the afternoon the wind usually turned. Clouds came in from the sea, low and grey, and \
the boats returned early if the water grew rough. The harbour master stood at the window \
of his small office, counting the masts as they passed the breakwater, and he did not \
sit down until every boat was safely tied up. On the worst days he kept a pot of coffee \
on the stove for the crews, who came in stamping their feet and shaking the rain from \
their hats.

When evening fell, the lamps along the quay came on one by one. The town grew quiet \
again, and the only sounds were the slap of water against the hulls and the distant \
turning of the old light."""

# The instruction after the text: SmolLM2-135M then copies it (~5 tokens per step with
# greedy prompt lookup); asked first, it paraphrases (~2).
REPEAT_PROMPT = f"{REPEAT_TEXT}\n\nRepeat the text above exactly, word for word."

# scenarios.text's words come to ~1.09 tokens each with SmolLM2's tokenizer.
TOKENS_PER_WORD = 1.09


def fresh_prompt(tokens: int, seed: int) -> str:
    """About `tokens` tokens (before the chat template) that no cache has seen."""
    return text(max(1, round(tokens / TOKENS_PER_WORD)), seed) + "\n\nSummarise this."
