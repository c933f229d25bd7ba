"""Text to token ids for the text networks: a vocabulary learned from the training texts only."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable

import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError

from modelyard.config import SchemaSettings
from modelyard.errors import ModelyardError
from modelyard.features.rows import OnePredictionPerRow

TOKEN = re.compile(r"\w+|[^\w\s]")
PAD, UNKNOWN = 0, 1


AUTO_QUANTILE = 95  # max_length None: pad to this percentile of the training texts' token counts
AUTO_MAX_LENGTH = 1000  # ... but never longer than this


class TextVectorizer:
    """Texts -> right-padded int64 token ids (N, `max_length_`) and lengths (N,).

    Tokens are words (`\\w+`) and single punctuation marks. `vocabulary_` maps token -> id:
    0 is "<pad>", 1 is "<unk>" (any token not in the vocabulary), then the training tokens
    seen at least `min_freq` times, most frequent first, ties alphabetical, up to
    `max_vocab` entries in all (the two reserved ones included), so
    `len(vocabulary_)` is the `vocab_size` of the text networks.

    `max_length_`, the padded length, is `max_length` when given; when None, `fit` sets it
    to the 95th percentile of the training texts' token counts (rounded up, 1 to 1000), so
    short texts are not mostly padding. Longer texts keep their first `max_length_` tokens.
    """

    def __init__(
        self, max_vocab: int = 20000, max_length: int | None = None, min_freq: int = 1, lowercase: bool = True
    ):
        self.max_vocab = max_vocab
        self.max_length = max_length
        self.min_freq = min_freq
        self.lowercase = lowercase

    def tokenize(self, text: str) -> list[str]:
        """The tokens of one text."""
        return TOKEN.findall(text.lower() if self.lowercase else text)

    def fit(self, texts: Iterable[str]) -> TextVectorizer:
        """Build `vocabulary_` and set `max_length_` from the training texts."""
        if self.max_vocab < 3 or (self.max_length is not None and self.max_length < 1) or self.min_freq < 1:
            raise ValueError("max_vocab must be >= 3, max_length >= 1 (or None) and min_freq >= 1")
        texts = _as_texts(texts)
        if not texts:
            raise ModelyardError("there are no texts to learn a vocabulary from", "check the text column")
        tokenized = [self.tokenize(text) for text in texts]
        counts = Counter(token for tokens in tokenized for token in tokens)
        if not counts:
            raise ModelyardError(
                f"all {len(texts)} training texts are blank (no words or punctuation)", "check the text column"
            )
        kept = sorted((t for t, c in counts.items() if c >= self.min_freq), key=lambda t: (-counts[t], t))
        tokens = ["<pad>", "<unk>", *kept[: self.max_vocab - 2]]
        self.vocabulary_ = {token: i for i, token in enumerate(tokens)}
        if self.max_length is not None:
            self.max_length_ = int(self.max_length)
        else:
            quantile = np.percentile([len(tokens) for tokens in tokenized], AUTO_QUANTILE)
            self.max_length_ = int(min(AUTO_MAX_LENGTH, max(1, math.ceil(quantile))))
        return self

    def transform(self, texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """int64 ids (N, max_length_), 0-padded on the right, and int64 lengths (N,)."""
        if not hasattr(self, "vocabulary_"):
            raise NotFittedError("TextVectorizer is not fitted yet; call fit(training_texts) first")
        texts = _as_texts(texts)
        length = self.padded_length
        ids = np.full((len(texts), length), PAD, dtype=np.int64)
        lengths = np.zeros(len(texts), dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = self.tokenize(text)[:length]
            ids[row, : len(tokens)] = [self.vocabulary_.get(t, UNKNOWN) for t in tokens]
            lengths[row] = len(tokens)
        return ids, lengths

    @property
    def padded_length(self) -> int:
        """`max_length_`; a vectorizer pickled before it existed pads to its `max_length`."""
        return getattr(self, "max_length_", None) or self.max_length

    def fit_transform(self, texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        texts = _as_texts(texts)
        return self.fit(texts).transform(texts)


def _as_texts(texts: Iterable[str]) -> list[str]:
    """A list of strings; a missing value (None, NaN) or any other type is an error naming its row."""
    if isinstance(texts, str):
        raise ModelyardError("expected a list of texts, got one string", "wrap it in a list")
    texts = list(texts)
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise ModelyardError(
                f"text {row} is {text!r} ({type(text).__name__}), not a string",
                "fill missing texts with '' or drop those rows",
            )
    return texts


class TextPreprocessor(OnePredictionPerRow):
    """A text column to padded token ids for the text networks (as float32, the dtype `fit()`
    feeds; the network reads them back as integer ids). `max_length` None: pad to the 95th
    percentile of the training texts' token counts (see `TextVectorizer`)."""

    def __init__(self, column: str, max_vocab: int, max_length: int | None, min_freq: int, lowercase: bool) -> None:
        self.column = column
        self.vectorizer = TextVectorizer(max_vocab, max_length, min_freq, lowercase)

    def fit(self, frame: pd.DataFrame, y: np.ndarray | None = None) -> TextPreprocessor:
        self.vectorizer.fit(self._texts(frame))
        self.vocab_size_ = len(self.vectorizer.vocabulary_)
        return self

    @property
    def input_shape_(self) -> tuple[int]:
        return (self.vectorizer.padded_length,)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        ids, _ = self.vectorizer.transform(self._texts(frame))
        return ids.astype(np.float32)

    def input_columns(self, schema: SchemaSettings) -> list[str]:
        return [self.column]

    def _texts(self, frame: pd.DataFrame) -> list[str]:
        if self.column not in frame.columns:
            raise ModelyardError(f"the input has no text column {self.column!r}", f"pass a column named {self.column}")
        return frame[self.column].fillna("").astype(str).tolist()
