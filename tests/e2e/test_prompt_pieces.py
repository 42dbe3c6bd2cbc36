"""The bundled model's tokenizer with the piece cache (chatd.engine.pieces) gives
exactly llama.cpp's tokens, for text made of its special tokens, whitespace, partial
special tokens, non-ASCII and words, with and without BOS."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from benchmarks.workloads import fresh_prompt
from chatd.engine.llama import LlamaModel, LlamaSettings
from chatd.models.registry import bundled_model_path


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaModel]:
    m = LlamaModel(bundled_model_path(), LlamaSettings(kv_cells=256, n_seq_max=1))
    yield m
    m.close()


def test_bundled_model_uses_the_piece_cache(model: LlamaModel) -> None:
    assert model._pieces is not None


def test_piece_tokens_equal_llama_cpp_tokens(model: LlamaModel) -> None:
    assert model._pieces is not None
    rng = random.Random(7)
    specials = [s.text.decode() for s in model._pieces._specials]
    odd = ["<|im", "_start|>", "<|", "|>", "<", "é", "🙂", "\u00a0", " ", "\n", "\t", "  \n ",
           "\r\n", "\v"]
    for i in range(1500):
        parts = []
        for _ in range(rng.randint(0, 12)):
            r = rng.random()
            if r < 0.3:
                parts.append(rng.choice(specials))
            elif r < 0.6:
                parts.append(rng.choice(odd))
            else:
                parts.append(fresh_prompt(rng.randint(1, 30), i)[:rng.randint(1, 120)])
        text = "".join(parts)
        for add_special in (True, False):
            assert model.tokenize(text, add_special=add_special) == model._tokenize(
                text.encode(), add_special, True), repr(text)
    assert model._pieces.hits > 0
