"""WordNet semantics of an AMAP: lemma AMAPs, t-SNE per layer, and permutation tests.

>>> amap = load("out/amap")                                                    # doctest: +SKIP
>>> r = analyze(model, amap, n_permutations=1000)                              # doctest: +SKIP
>>> r.tests                  # per layer and label: statistic, p-value, effect   # doctest: +SKIP

1. Every WordNet synset gives its first lemma (``dog`` for dog.n.01), POS (satellite adjectives
   count as adjectives), lexname (``noun.animal``) and topic domain (the first of
   ``topic_domains()``, e.g. ``microbiology.n.01``; most synsets have none). A lemma string is kept
   once, labelled by the first synset (WordNet's most frequent sense) that lists it first:
   duplicates would give identical vectors and inflate any within-label similarity.
2. The lemma is tokenized (with a leading space by default, as words appear inside text); its
   lemma AMAP is the mean of the AMAP columns of its pieces that were seen (count > 0). Lemmas
   with no seen piece are dropped and counted.
3. Per layer, lemma AMAPs are standardised per neuron across lemmas (every token excites the same
   neurons a lot; without this all cosines are near 1), then t-SNE (scikit-learn) draws a sample,
   and ``permutation_test`` asks whether lemmas sharing a domain / POS / lexname have more similar
   AMAPs than lemmas that do not (labels shuffled ``n_permutations`` times).
4. Surface form confounds all three: lemmas sharing a label share token pieces (``-itis``,
   ``-ly``, a multiword head), and shared pieces mean shared AMAP columns, even in a network that
   learned nothing. ``control(...)`` (``workbench semantics --control random-init``) runs the same
   pipeline on a randomly initialised model of the same shape and tokenizer over the same data;
   only the trained model's excess over it is evidence of learned semantics (``compare``).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from workbench import artifacts
from workbench.analyses.amap import AmapResult
from workbench.errors import WorkbenchError
from workbench.kernels.permutation import permutation_test
from workbench.results import ResultMixin

ARTIFACT = "semantics.safetensors"
LABELS = ("domain", "pos", "lexname")
LOW_COVERAGE = 0.2  # below this share of lemmas with a seen piece, the tests cover few words
CONFOUND = ("Surface form is a confound: lemmas that share a label often share token pieces "
            "(suffixes such as -itis or -ly, the head of a multiword lemma), and shared pieces "
            "mean shared AMAP columns even in an untrained network. Compare with the random-init "
            "control (workbench semantics --control random-init): only the excess over it is "
            "evidence of learned semantics.")


def p_text(p: float, n_permutations: int) -> str:
    """``p < 1/(n+1)`` at the permutation floor ((1 + hits) / (1 + n) with no hit), else the
    value: no permutation test can give a p-value below its floor."""
    floor = 1 / (n_permutations + 1)
    return f"p < 1/{n_permutations + 1}" if p <= floor * (1 + 1e-9) else f"p = {p:.4g}"
POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}


def lemma_table(wordnet=None, cache: bool = True) -> list[dict]:
    """One row per distinct first lemma: ``{lemma, synset, pos, lexname, domain}`` (cached)."""
    from workbench.paths import cache_dir
    from workbench.wordnet import open_wordnet, resolve_wordnet_dir

    path = None
    if wordnet is None and cache:
        _, folder = resolve_wordnet_dir()
        stamp = [f"{p.name}:{p.stat().st_size}" for p in sorted(folder.glob("data.*"))]
        key = hashlib.sha256(json.dumps(["lemmas-v1", *stamp]).encode()).hexdigest()[:16]
        path = cache_dir("semantics") / f"lemmas-{key}.json"
        if path.is_file():
            try:  # a cache damaged by a kill or a full disk is rebuilt, not trusted
                rows = json.loads(path.read_text())
                if isinstance(rows, list) and all(isinstance(r, dict) and "lemma" in r for r in rows):
                    return rows
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                pass
    rows = rows_from_synsets((wordnet or open_wordnet()).all_synsets())
    if path is not None:
        artifacts.write_json(path, rows)
    return rows


def rows_from_synsets(synsets) -> list[dict]:
    """Lemma rows of ``synsets`` (NLTK ``Synset`` objects), first occurrence of a lemma wins."""
    rows, seen = [], set()
    for s in synsets:
        lemma = s.lemmas()[0].name().replace("_", " ")
        if lemma in seen:
            continue
        seen.add(lemma)
        domains = s.topic_domains()
        rows.append({"lemma": lemma, "synset": s.name(), "pos": POS_NAMES[s.pos()],
                     "lexname": s.lexname(), "domain": domains[0].name() if domains else ""})
    return rows


def check_same_model(model, amap: AmapResult) -> None:
    """Refuse an AMAP built by another model or tokenizer than ``model``."""
    mine = artifacts.model_metadata(model)
    keys = ("model", "weights_sha256_16", "tokenizer", "tokenizer_vocab")
    diff = [f"{k}: AMAP {amap.meta.get(k)!r} vs model {mine.get(k)!r}" for k in keys
            if amap.meta.get(k) != mine.get(k)]
    if diff:
        raise WorkbenchError(
            f"the AMAP was built with another model or tokenizer ({'; '.join(diff)}); pass the "
            f"model it was built with (--model {amap.meta.get('model')}) or rebuild the AMAP"
        )


def lemma_pieces(tokenizer, lemmas: list[str], prefix: str = " ") -> list[list[int]]:
    return tokenizer([prefix + w for w in lemmas], add_special_tokens=False)["input_ids"]


def pool(
    means: Float[Tensor, "layer key mlp"], keys: Tensor, pieces: list[list[int]]
) -> tuple[Float[Tensor, "layer lemma mlp"], Tensor]:
    """Each lemma's mean over its seen pieces' columns (``means[:, j]`` is key ``keys[j]``, the
    sparse AMAP's keys), and which lemmas had a seen piece."""
    where = {int(k): j for j, k in enumerate(keys.tolist())}
    rows, cols, weights = [], [], []
    kept = torch.zeros(len(pieces), dtype=torch.bool)
    for i, ids in enumerate(pieces):
        seen = [where[t] for t in ids if t in where]
        if seen:
            kept[i] = True
            for j in seen:
                rows.append(i)
                cols.append(j)
                weights.append(1.0 / len(seen))
    a = torch.sparse_coo_tensor(torch.tensor([rows, cols], dtype=torch.long).reshape(2, -1),
                                torch.tensor(weights, dtype=torch.float64),
                                (len(pieces), len(where)), check_invariants=False).coalesce()
    filled = torch.nan_to_num(means.double(), nan=0.0)
    out = torch.stack([torch.sparse.mm(a, filled[layer]) for layer in range(filled.shape[0])])
    return out.float(), kept


def standardise(x: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
    """Columns to mean 0, std 1 across rows (constant columns become 0)."""
    x = x.double()
    mu, sd = x.mean(0, keepdim=True), x.std(0, keepdim=True)
    return torch.where(sd > 0, (x - mu) / sd.clamp_min(1e-12), torch.zeros_like(x))


@dataclass(repr=False)
class SemanticsResult(ResultMixin):
    rows: list[dict]  # the kept lemmas (sample): lemma, synset, pos, lexname, domain
    vectors: Float[Tensor, "layer lemma mlp"]
    layers: list[int]
    tsne: Float[Tensor, "layer point 2"]
    tsne_index: Tensor  # rows of ``rows`` drawn in the t-SNE
    tests: list[dict]
    counts: dict  # lemmas in WordNet, dropped (no seen piece), kept, sampled
    meta: dict = field(default_factory=dict)
    control: list[dict] = field(default_factory=list)  # ``compare`` rows, when a control ran

    def labels(self, kind: str, top: int | None = None) -> list[str]:
        """Each sampled lemma's label of ``kind``; with ``top``, rarer labels become "other"."""
        values = [r[kind] or "(none)" for r in self.rows]
        if top is None:
            return values
        common = {v for v, _ in Counter(v for v in values if v != "(none)").most_common(top)}
        return [v if v in common or v == "(none)" else "other" for v in values]

    def summary(self) -> dict:
        """Key numbers: lemmas kept, layers, and the smallest p-value per label kind."""
        best = {}
        for t in self.tests:
            best[t["label"]] = min(best.get(t["label"], 1.0), t["p_value"])
        return {"lemmas": dict(self.counts), "layers": list(self.layers),
                "tests": len(self.tests), "min_p_by_label": best}

    def to_frame(self):
        """One row per (layer, label) permutation test."""
        import pandas as pd

        return pd.DataFrame(self.tests).set_index(["layer", "label"])

    def tensors(self) -> dict[str, Tensor]:
        return {"vectors": self.vectors, "tsne": self.tsne, "tsne_index": self.tsne_index,
                "layers": torch.tensor(self.layers, dtype=torch.long)}

    def figures(self, top: int = 5) -> dict:
        from workbench.views import semantics as view

        return view.figures(self, top)

    def save(self, out_dir: str | Path) -> Path:
        meta = {**self.meta, "tests": self.tests, "counts": self.counts, "rows": self.rows,
                "control": self.control}
        return artifacts.save(Path(out_dir) / ARTIFACT, self.tensors(), meta)


def load(path: str | Path) -> SemanticsResult:
    """A ``SemanticsResult`` from the folder ``save`` wrote (or its ``semantics.safetensors``)."""
    file, tensors, meta = artifacts.load_named(path, ARTIFACT, "semantics result",
                                               "`workbench semantics --out`")
    f = artifacts.Fields(meta, file)
    rows, tests, counts = f.get("rows", list), f.get("tests", list), f.get("counts", dict)
    control = meta.get("control") or []
    kept = {k: v for k, v in meta.items() if k not in ("tests", "counts", "rows", "control")}
    return SemanticsResult(rows, tensors["vectors"], tensors["layers"].tolist(), tensors["tsne"],
                           tensors["tsne_index"], tests, counts, kept, control)


def _sample(idx: list[int], k: int, g: torch.Generator) -> list[int]:
    if len(idx) <= k:
        return idx
    return sorted(idx[i] for i in torch.randperm(len(idx), generator=g)[:k].tolist())


def analyze(
    model,
    amap: AmapResult,
    *,
    mode: str = "input",
    prefix: str = " ",
    layers: list[int] | None = None,
    max_lemmas: int = 3000,
    tsne_points: int = 1500,
    tsne_iterations: int = 1000,
    n_permutations: int = 1000,
    seed: int = 0,
    table: list[dict] | None = None,
    progress: bool = True,
) -> SemanticsResult:
    """Lemma AMAPs, t-SNE and permutation tests (see the module docstring).

    ``max_lemmas`` caps each test's sample (the domain test samples among lemmas that have a
    domain); ``table`` replaces WordNet's lemma table (rows as ``lemma_table`` returns).
    ``progress``: a bar over the layers (a t-SNE and three permutation tests each).
    """
    from tqdm.auto import tqdm

    check_same_model(model, amap)
    layers = list(amap.layers if layers is None else layers)
    rows_all = lemma_table() if table is None else table
    if not rows_all:
        raise WorkbenchError("the lemma table is empty: is WordNet installed? (see docs/semantics.md)")
    means, keys = amap.means(mode), amap.keys(mode)
    pieces = lemma_pieces(model.tokenizer, [r["lemma"] for r in rows_all], prefix)
    seen = set(keys.tolist())
    kept = [i for i, p in enumerate(pieces) if any(t in seen for t in p)]
    coverage = len(kept) / max(1, len(rows_all))
    if coverage < LOW_COVERAGE:
        import warnings

        warnings.warn(f"only {len(kept):,} of {len(rows_all):,} lemmas ({coverage:.0%}) have a token "
                      "piece the AMAP saw: the tests speak for those words only; build the AMAP "
                      "over more text (e.g. --dataset wordnet-glosses) for a wider cover",
                      stacklevel=2)
    if len(kept) < 10:
        raise WorkbenchError(
            f"only {len(kept)} of {len(rows_all)} lemmas have a token the AMAP saw; build the AMAP "
            "over more text (e.g. --dataset wordnet-glosses)"
        )
    g = torch.Generator().manual_seed(seed)
    general = _sample(kept, max_lemmas, g)
    with_domain = _sample([i for i in kept if rows_all[i]["domain"]], max_lemmas, g)
    chosen = sorted(set(general) | set(with_domain))
    where = {i: j for j, i in enumerate(chosen)}
    vectors, _ = pool(means[[amap._row(layer) for layer in layers]], keys,
                      [pieces[i] for i in chosen])
    rows = [rows_all[i] for i in chosen]
    tsne_index = torch.tensor(_sample(list(range(len(chosen))), tsne_points, g), dtype=torch.long)
    tests, embeds = [], []
    bar = tqdm(total=len(layers) * (1 + len(LABELS)), desc="semantics", unit="step",
               disable=not progress, dynamic_ncols=True, leave=False)
    for li, layer in enumerate(layers):
        x = standardise(vectors[li])
        bar.set_postfix_str(f"layer {layer} t-SNE")
        embeds.append(tsne(x[tsne_index], seed, tsne_iterations))
        bar.update(1)
        for kind in LABELS:
            bar.set_postfix_str(f"layer {layer} {kind} test")
            bar.update(1)
            idx = [where[i] for i in (with_domain if kind == "domain" else general)]
            names = [rows[j][kind] for j in idx]
            codes = {v: c for c, v in enumerate(sorted(set(names)))}
            labels = torch.tensor([codes[v] for v in names], dtype=torch.long)
            if len(codes) < 2:
                continue
            r = permutation_test(x[idx], labels, n_permutations, seed)
            tests.append({"layer": layer, "label": kind, **r.as_dict()})
    bar.close()
    counts_info = {"lemmas": len(rows_all), "dropped_unseen": len(rows_all) - len(kept),
                   "kept": len(kept), "coverage": coverage, "sampled": len(chosen), "general_sample": len(general),
                   "domain_sample": len(with_domain)}
    meta = {k: amap.meta.get(k) for k in ("model", "weights_sha256_16", "tokenizer")}
    meta["settings"] = {"mode": mode, "prefix": prefix, "layers": layers, "max_lemmas": max_lemmas,
                        "tsne_points": tsne_points, "tsne_iterations": tsne_iterations,
                        "n_permutations": n_permutations,
                        "seed": seed, "amap_fingerprint": amap.meta["amap"].get("fingerprint")}
    return SemanticsResult(rows, vectors, layers, torch.stack(embeds), tsne_index, tests,
                           counts_info, meta)


def random_init(model, seed: int = 1234):
    """A randomly initialised model with ``model``'s configuration and tokenizer (the control:
    its AMAP carries surface form, how a random network mixes a lemma's pieces, and nothing
    learned)."""
    import dataclasses
    import warnings

    from transformer_lens import HookedTransformer

    cfg = dataclasses.replace(model.cfg, seed=seed, init_weights=True,
                              model_name=f"{model.cfg.model_name}-random-init")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        control = HookedTransformer(cfg, tokenizer=model.tokenizer, move_to_device=False)
    from workbench.models import unembed_without_copy

    return unembed_without_copy(control.to(next(model.parameters()).device).eval())


def control(model, amap: AmapResult, windows, *, seed: int = 1234, batch_size: int = 32,
            progress: bool = True, **options) -> tuple[AmapResult, SemanticsResult]:
    """The random-init control of ``analyze(model, amap, **options)``: a random model of the
    same shape and tokenizer (``random_init``), its AMAP over ``windows`` (the data ``amap`` was
    built on) with ``amap``'s settings, and the same semantics on it."""
    from workbench.analyses.amap import analyze as build_amap

    settings = amap.meta.get("settings") or {}
    mode = options.get("mode", "input")
    ctrl = random_init(model, seed)
    c_amap = build_amap(ctrl, windows, modes=(mode,), positions=bool(settings.get("positions")),
                        layers=list(amap.layers), count_bos=bool(settings.get("count_bos")),
                        top_k=1, context_units=0, batch_size=batch_size, progress=progress,
                        require_full_window=False)
    return c_amap, analyze(ctrl, c_amap, progress=progress, **options)


def compare(trained: SemanticsResult, ctrl: SemanticsResult,
            alpha: float | None = None) -> list[dict]:
    """Per (layer, label): the trained model's test beside the control's, and the verdict
    fixed before looking: "supported" when the trained p-value is below ``alpha`` (default
    0.05 / number of tests, Bonferroni) and its statistic at least twice the control's."""
    alpha = 0.05 / max(1, len(trained.tests)) if alpha is None else alpha
    by_key = {(t["layer"], t["label"]): t for t in ctrl.tests}
    rows = []
    for t in trained.tests:
        c = by_key.get((t["layer"], t["label"]))
        if c is None:
            continue
        ok = t["p_value"] < alpha and t["statistic"] >= 2 * max(c["statistic"], 0.0)
        rows.append({"layer": t["layer"], "label": t["label"], "n": t["n_items"],
                     "T trained": t["statistic"], "p trained": t["p_value"],
                     "T control": c["statistic"], "p control": c["p_value"],
                     "n_permutations": t["n_permutations"], "alpha": alpha,
                     "supported": "yes" if ok else "no"})
    return rows


def tsne(x: Float[Tensor, "n d"], seed: int = 0, iterations: int = 1000) -> Float[Tensor, "n 2"]:
    from sklearn.manifold import TSNE

    n = x.shape[0]
    if n < 5:
        return torch.zeros(n, 2)
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
               max_iter=max(250, iterations), n_jobs=1).fit_transform(x.float().numpy())
    return torch.from_numpy(emb).float()
