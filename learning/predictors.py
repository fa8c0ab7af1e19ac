"""Quality predictors of prompt routers: given a prompt, each candidate's predicted quality, 0 to 1.

Two kinds, both learned with scikit-learn from targets (an item's normalised score per candidate):
- `ngram` (fast, no model call): the prompt's word unigrams and bigrams hashed into 2^18 features
  (scikit-learn's HashingVectorizer, l2-normalised, so it needs no vocabulary), and one ridge regression
  per candidate (a single multi-output Ridge, conjugate gradients on the sparse features: about a second
  for 10,000 prompts here, where choosing the penalty by cross-validation took ten times as long for no
  gain on our tests).
  A decision hashes the prompt's n-grams and takes a few sparse dot products: tens of microseconds.
- `semantic`: k nearest neighbours (cosine) of the prompt's embedding among the training prompts'
  embeddings, their scores averaged with weights by closeness (KNeighborsRegressor). The embedding comes
  from the router's embedding deployment; the caller computes it once per request and passes it in.

Predictions are clipped to [0, 1]. A candidate the predictor was not trained on is simply absent from
its predictions (learning.routing treats it as unpredicted).

Storage: a predictor is its arrays and a JSON header in NumPy's .npz format, loaded with
allow_pickle=False, so a stored predictor is data, never code: reading one cannot execute anything even
if the store were tampered with. The estimators are rebuilt from the arrays when loaded.
"""

from __future__ import annotations

import functools
import io
import json
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

# scikit-learn (with SciPy) takes seconds to import: it is imported where a predictor is trained or loaded,
# not by every process that loads the URL configuration (web, worker, beat).
if TYPE_CHECKING:
    from sklearn.feature_extraction.text import HashingVectorizer

FORMAT = 1
N_FEATURES = 2**18
NGRAM_RANGE = (1, 2)
RIDGE_ALPHA = 1.0
NEIGHBOURS = 10


class PredictorError(ValueError):
    """A stored predictor that cannot be read."""


def hashing_vectorizer() -> HashingVectorizer:
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(
        n_features=N_FEATURES, ngram_range=NGRAM_RANGE, alternate_sign=False, norm="l2", lowercase=True
    )


def _clip(values: np.ndarray, candidates: Sequence[str]) -> dict[str, float]:
    return {name: float(min(1.0, max(0.0, value))) for name, value in zip(candidates, values, strict=True)}


@functools.cache
def _murmurhash3_32() -> Callable[..., int]:
    from sklearn.utils import murmurhash3_32

    return murmurhash3_32


def feature_index(gram: str) -> int:
    """The column HashingVectorizer gives an n-gram (scikit-learn's _hashing_fast: signed MurmurHash3
    of its UTF-8 bytes, seed 0, absolute value modulo the feature count)."""
    hashed = _murmurhash3_32()(gram, seed=0)
    if hashed == -(2**31):
        return (2**31 - 1 - (N_FEATURES - 1)) % N_FEATURES
    return abs(hashed) % N_FEATURES


class NgramPredictor:
    """Hashed word n-grams and a linear model per candidate. Only the weights of features seen in
    training are kept (ridge leaves the others at exactly zero), as a small sparse matrix."""

    kind = "ngram"
    needs_embedding = False

    def __init__(self, candidates: Sequence[str], weights: Any, intercepts: np.ndarray) -> None:
        from scipy import sparse

        self.candidates = tuple(candidates)
        self.weights = sparse.csr_matrix(weights, dtype=np.float64)  # features × candidates
        self.intercepts = np.asarray(intercepts, dtype=np.float64)
        self.vectorizer = hashing_vectorizer()
        # The one-prompt path (`predict`) reads plain Python: the vectorizer's own n-grams, hashed as it
        # hashes them, and each seen feature's weights as a tuple; a NumPy call per prompt costs more
        # than the whole sum for a few dozen n-grams. test_router_predictors checks both paths agree.
        self.analyze = self.vectorizer.build_analyzer()
        coo = self.weights.tocoo()
        rows: dict[int, list[float]] = {}
        for row, column, value in zip(coo.row.tolist(), coo.col.tolist(), coo.data.tolist(), strict=True):
            rows.setdefault(row, [0.0] * len(self.candidates))[column] = value
        self.rows = {row: tuple(values) for row, values in rows.items()}
        self.base = tuple(self.intercepts.tolist())

    @classmethod
    def fit(cls, candidates: Sequence[str], texts: Sequence[str], targets: np.ndarray) -> NgramPredictor:
        from scipy import sparse
        from sklearn.linear_model import Ridge

        features = hashing_vectorizer().transform(texts)
        model = Ridge(alpha=RIDGE_ALPHA, solver="sparse_cg").fit(features, targets)
        coefficients = np.atleast_2d(model.coef_)  # candidates × features
        intercepts = np.atleast_1d(model.intercept_)
        return cls(candidates, sparse.csr_matrix(coefficients.T), intercepts)

    def predict_many(self, texts: Sequence[str]) -> np.ndarray:
        features = self.vectorizer.transform(texts)
        return np.clip((features @ self.weights).toarray() + self.intercepts, 0.0, 1.0)

    def predict(self, text: str, embedding: np.ndarray | None = None) -> dict[str, float]:
        counts: dict[int, int] = {}
        for gram in self.analyze(text):
            index = feature_index(gram)
            counts[index] = counts.get(index, 0) + 1
        totals = list(self.base)
        if counts:
            norm = math.sqrt(sum(count * count for count in counts.values()))
            for index, count in counts.items():
                weights = self.rows.get(index)
                if weights is not None:
                    share = count / norm
                    for column, weight in enumerate(weights):
                        totals[column] += weight * share
        return {name: min(1.0, max(0.0, total)) for name, total in zip(self.candidates, totals, strict=True)}

    def arrays(self) -> dict[str, np.ndarray]:
        weights = self.weights.tocoo()
        return {
            "rows": weights.row.astype(np.int64),
            "columns": weights.col.astype(np.int64),
            "values": weights.data.astype(np.float64),
            "intercepts": self.intercepts,
        }

    @classmethod
    def from_arrays(cls, candidates: Sequence[str], arrays: Any) -> NgramPredictor:
        from scipy import sparse

        weights = sparse.coo_matrix(
            (arrays["values"], (arrays["rows"], arrays["columns"])), shape=(N_FEATURES, len(candidates))
        )
        return cls(candidates, weights, arrays["intercepts"])


class SemanticPredictor:
    """k nearest neighbours of the prompt's embedding (cosine), weighted by closeness."""

    kind = "semantic"
    needs_embedding = True

    def __init__(self, candidates: Sequence[str], embeddings: np.ndarray, targets: np.ndarray) -> None:
        self.candidates = tuple(candidates)
        self.embeddings = np.asarray(embeddings, dtype=np.float32)
        self.targets = np.asarray(targets, dtype=np.float64).reshape(len(self.embeddings), len(candidates))
        self.neighbours = min(NEIGHBOURS, len(self.embeddings))
        from sklearn.neighbors import KNeighborsRegressor

        self.model = KNeighborsRegressor(
            n_neighbors=self.neighbours, weights="distance", metric="cosine", algorithm="brute"
        ).fit(self.embeddings, self.targets)
        # The one-prompt path (`predict`) is one matrix-vector product over unit vectors: scikit-learn's
        # brute search spends ~75 ms on a single query against 7,000 prompts here, this about 0.5 ms.
        # test_router_predictors checks that both agree.
        norms = np.linalg.norm(self.embeddings, axis=1, keepdims=True)
        self.unit = self.embeddings / np.where(norms > 0, norms, 1.0)

    @classmethod
    def fit(cls, candidates: Sequence[str], embeddings: np.ndarray, targets: np.ndarray) -> SemanticPredictor:
        return cls(candidates, embeddings, targets)

    def predict_many(self, embeddings: np.ndarray) -> np.ndarray:
        predicted = self.model.predict(np.asarray(embeddings, dtype=np.float32))
        return np.clip(predicted.reshape(len(embeddings), len(self.candidates)), 0.0, 1.0)

    def predict(self, text: str, embedding: np.ndarray | None = None) -> dict[str, float]:
        if embedding is None:
            raise ValueError("The semantic predictor needs the prompt's embedding.")
        vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(vector))
        # einsum, not `@`: BLAS would spread one small product over threads, which on a busy machine
        # costs tens of milliseconds where one thread takes half of one.
        distances = 1.0 - np.einsum("ij,j->i", self.unit, vector / norm if norm > 0 else vector)
        nearest = np.argpartition(distances, self.neighbours - 1)[: self.neighbours]
        close = distances[nearest]
        exact = close <= 1e-6
        # As KNeighborsRegressor weighs by distance: an exact match outweighs every other neighbour.
        weights = exact.astype(np.float64) if exact.any() else 1.0 / close.astype(np.float64)
        predicted = weights @ self.targets[nearest] / weights.sum()
        return _clip(predicted, self.candidates)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"embeddings": self.embeddings, "targets": self.targets}

    @classmethod
    def from_arrays(cls, candidates: Sequence[str], arrays: Any) -> SemanticPredictor:
        return cls(candidates, arrays["embeddings"], arrays["targets"])


AnyPredictor = NgramPredictor | SemanticPredictor
KINDS: dict[str, type[NgramPredictor] | type[SemanticPredictor]] = {
    NgramPredictor.kind: NgramPredictor,
    SemanticPredictor.kind: SemanticPredictor,
}


def dump(predictor: AnyPredictor) -> bytes:
    """The predictor as .npz bytes (arrays and a JSON header; no pickles)."""
    header = {"format": FORMAT, "kind": predictor.kind, "candidates": list(predictor.candidates)}
    arrays: dict[str, Any] = {"header": np.array(json.dumps(header)), **predictor.arrays()}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def load(data: bytes) -> AnyPredictor:
    """A predictor from `dump`'s bytes; PredictorError when they are not one."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            header = json.loads(str(arrays["header"]))
            kind = KINDS[header["kind"]]
            if header.get("format") != FORMAT:
                raise PredictorError(f"Stored predictor format {header.get('format')} is not {FORMAT}.")
            return kind.from_arrays(header["candidates"], {name: arrays[name] for name in arrays.files})
    except PredictorError:
        raise
    except (ValueError, KeyError, OSError, TypeError) as error:
        raise PredictorError(f"Not a stored predictor: {error}") from None
