"""The data set: clustered 768-d vectors, ~300 characters of text a row, query samples.

Uniform random vectors in 768 dimensions have no neighbourhoods (every point is
about equally far from every other), so HNSW recall on them says nothing about
real embeddings. Real ones have a low intrinsic dimension and topics. So: 100
cluster centres in a 32-d latent space, points = centre + gaussian noise,
projected to 768-d by one fixed gaussian matrix, plus a little ambient noise,
L2-normalized. Everything is drawn from fixed seeds: a mode always gets the
same data.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import numpy as np

DIM = 768
LATENT = 32
CLUSTERS = 100
# Within-cluster spread, relative to the spread of the centres (1.0).
SPREAD = 0.5
# Ambient noise per 768-d coordinate, relative to a projected coordinate's scale.
AMBIENT = 0.05
RARE_SHARE = 0.01
QUERY_SAMPLES = 200
QUERY_TEXTS = 50
WRITE_BODIES = 200

USERS = [str(uuid.UUID(f"0b5e7c3a-1f00-4a00-8000-{i:012x}")) for i in range(1, 11)]

NAMES = ["Ana", "Ben", "Chloe", "Dev", "Elif", "Farid", "Grace", "Hugo", "Ines", "Jonas",
         "Kenji", "Lena", "Marta", "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Sami", "Tove"]
PLACES = ["the Lisbon office", "the Berlin team room", "a video call", "the kitchen", "the client site in Lyon",
          "the quarterly offsite", "the train to Utrecht", "the support channel", "the design review", "lunch"]
TOPICS = ["the Q3 hiring plan", "the billing migration", "the onboarding checklist", "the mobile release",
          "the search latency regression", "the vendor contract", "the data retention policy",
          "the holiday rota", "the customer survey", "the new pricing page", "the incident on Friday",
          "the API rate limits", "the warehouse move", "the accessibility audit", "the budget draft"]
PREFERENCES = ["short written updates", "a call before any big decision", "mornings for deep work",
               "dark roast coffee", "tickets over chat messages", "a weekly summary email",
               "vegetarian options at team lunches", "meeting-free Wednesdays", "Slack threads, not DMs",
               "diagrams over long documents"]
WHEN = ["on Monday", "by Friday", "next sprint", "before the board meeting", "end of month",
        "after the release", "tomorrow morning", "in two weeks"]
SENTENCES = [
    "{name} mentioned at {place} that {pron} prefers {pref}.",
    "Follow up with {name} {when} about {topic}; {pron} asked for the numbers first.",
    "{name} is worried that {topic} will slip and wants a fallback plan {when}.",
    "Agreed with {name} to split {topic} into two smaller pieces and review them {when}.",
    "{name} owns {topic} now and will send the first draft {when}.",
    "At {place}, {name} said {topic} needs sign-off from legal before anything ships.",
    "Remember that {name} likes {pref} and gets impatient with long status meetings.",
    "{name} shared notes on {topic} from {place}; the open question is the timeline.",
]
QUESTIONS = [
    "What does {name} prefer for updates?",
    "Who owns {topic}?",
    "When is the deadline for {topic}?",
    "What did {name} say at {place}?",
    "Which decisions about {topic} are still open?",
    "What should I remember before meeting {name}?",
]


def _fill(rng: np.random.Generator, template: str) -> str:
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    return template.format(name=pick(NAMES), place=pick(PLACES), topic=pick(TOPICS),
                           pref=pick(PREFERENCES), when=pick(WHEN), pron=pick(["she", "he", "they"]))


def note_text(rng: np.random.Generator, target: int = 300) -> str:
    """Sentences from the templates until the text is about `target` characters."""
    parts: list[str] = []
    while sum(len(p) + 1 for p in parts) < target - 40:
        parts.append(_fill(rng, SENTENCES[int(rng.integers(len(SENTENCES)))]))
    return " ".join(parts)


def vec_json(v: np.ndarray) -> str:
    """A vector as a JSON array, 6 significant digits a value."""
    return "[" + ",".join([f"{x:.6g}" for x in v.tolist()]) + "]"


@dataclass
class Dataset:
    n: int
    vectors: np.ndarray        # (n, DIM) float32, unit length
    user_of: np.ndarray        # (n,) index into USERS
    rare: np.ndarray           # (n,) bool: metadata.tag == "rare"
    texts: list[str]
    queries: np.ndarray        # (QUERY_SAMPLES, DIM): fresh samples of the same clusters
    query_texts: list[str]     # QUERY_TEXTS fixed questions (search_text_cached)
    write_vectors: np.ndarray  # (WRITE_BODIES, DIM) for create_vector
    write_texts: list[str]

    def item_json(self, i: int) -> str:
        text = json.dumps(self.texts[i])
        tag = "rare" if self.rare[i] else "common"
        return (f'{{"user_id":"{USERS[self.user_of[i]]}","context_type":"note","content":{{"text":{text}}},'
                f'"text":{text},"metadata":{{"tag":"{tag}","n":{i}}},"embedding":{vec_json(self.vectors[i])}}}')

    def batch_bodies(self, size: int) -> list[tuple[int, bytes]]:
        """Pre-encoded POST /contexts/batch bodies: (item count, body)."""
        out = []
        for start in range(0, self.n, size):
            items = [self.item_json(i) for i in range(start, min(start + size, self.n))]
            out.append((len(items), ('{"items":[' + ",".join(items) + "]}").encode()))
        return out


class _Space:
    """The latent clusters and the projection: one fixed geometry."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.centres = rng.standard_normal((CLUSTERS, LATENT))
        self.proj = rng.standard_normal((LATENT, DIM)) / np.sqrt(LATENT)

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        cluster = rng.integers(CLUSTERS, size=count)
        z = self.centres[cluster] + SPREAD * rng.standard_normal((count, LATENT))
        scale = np.sqrt(1 + SPREAD**2)  # a projected coordinate's standard deviation
        v = z @ self.proj + AMBIENT * scale * rng.standard_normal((count, DIM))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v.astype(np.float32)


def generate(n: int, seed: int = 20261201) -> Dataset:
    space = _Space(seed)
    rng = np.random.default_rng(seed + 1)
    vectors = space.sample(rng, n)
    user_of = rng.integers(len(USERS), size=n)
    rare = np.zeros(n, dtype=bool)
    rare[rng.choice(n, size=max(1, round(n * RARE_SHARE)), replace=False)] = True
    texts = [note_text(rng) for _ in range(n)]
    qrng = np.random.default_rng(seed + 2)
    queries = space.sample(qrng, QUERY_SAMPLES)
    query_texts = [_fill(qrng, QUESTIONS[i % len(QUESTIONS)]) + f" (question {i})" for i in range(QUERY_TEXTS)]
    wrng = np.random.default_rng(seed + 3)
    return Dataset(n=n, vectors=vectors, user_of=user_of, rare=rare, texts=texts, queries=queries,
                   query_texts=query_texts, write_vectors=space.sample(wrng, WRITE_BODIES),
                   write_texts=[note_text(wrng) for _ in range(WRITE_BODIES)])
