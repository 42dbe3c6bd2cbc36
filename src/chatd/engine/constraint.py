"""Grammar constraints: llguidance matchers that mask the logits row every step.

The tokenizer view llguidance needs is built once per model (~0.5 s) on first
use; each grammar is compiled once and cached, and every sequence gets a cheap
deep copy of the pristine matcher. Masks are computed into one reused bitmask
and unpacked with numpy: no Python loop over the vocabulary.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import llguidance as llg
import llguidance.numpy as llg_np
import numpy as np
from llguidance.llamacpp import lltokenizer_from_vocab

from chatd.engine.llama import LlamaModel

CACHE_SIZE = 128


class GrammarError(ValueError):
    """The grammar cannot be enforced (a schema keyword llguidance does not support...)."""


class Constraint:
    """One sequence's grammar state."""

    def __init__(self, matcher: llg.LLMatcher, bitmask: np.ndarray, n_vocab: int) -> None:
        self._matcher = matcher
        self._bitmask = bitmask
        self._n_vocab = n_vocab

    def disallowed(self) -> np.ndarray:
        """Boolean mask of tokens the grammar forbids next (True = banned)."""
        llg_np.fill_next_token_bitmask(self._matcher, self._bitmask, 0)
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little",
                             count=self._n_vocab)
        return bits == 0

    def accept(self, token: int) -> bool:
        return bool(self._matcher.consume_token(token))

    @property
    def finished(self) -> bool:
        """Nothing more can follow: the output is complete."""
        return bool(self._matcher.is_stopped())

    @property
    def error(self) -> str | None:
        return self._matcher.get_error() or None if self._matcher.is_error() else None


class GrammarCompiler:
    """Validates and caches grammars for one model; thread-safe."""

    def __init__(self, model: LlamaModel) -> None:
        self._model = model
        self._lock = threading.Lock()
        self._tokenizer: llg.LLTokenizer | None = None
        self._cache: OrderedDict[str, llg.LLMatcher] = OrderedDict()

    def _tok(self) -> llg.LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = lltokenizer_from_vocab(
                    self._model.vocab, eos_token=sorted(self._model.eog_ids) or None)
            return self._tokenizer

    def compile(self, grammar: str) -> llg.LLMatcher:
        """The pristine matcher for `grammar`, compiled on first use."""
        with self._lock:
            cached = self._cache.get(grammar)
            if cached is not None:
                self._cache.move_to_end(grammar)
                return cached
        tokenizer = self._tok()
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
        if is_error:
            raise GrammarError("; ".join(messages) or "invalid grammar")
        if messages:  # warnings mean a weaker constraint than asked for: refuse
            raise GrammarError("; ".join(messages))
        matcher = llg.LLMatcher(tokenizer, grammar)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        with self._lock:
            self._cache[grammar] = matcher
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return matcher

    def constraint(self, grammar: str) -> Constraint:
        """A fresh per-sequence constraint (the grammar must compile)."""
        bitmask = llg_np.allocate_token_bitmask(1, self._model.n_vocab)
        return Constraint(self.compile(grammar).deep_copy(), bitmask, self._model.n_vocab)
