"""Semantics of an AMAP: lemma pooling against a direct computation, the full pipeline, refusals,
and (when its weights exist) the study on tiny-gloss-lm over a slice of the gloss corpus."""

from itertools import islice
from types import SimpleNamespace

import plotly.graph_objects as go
import pytest
import torch

from workbench.analyses import semantics
from workbench.analyses.amap import analyze as build_amap
from workbench.data import load_windows
from workbench.errors import WorkbenchError
from workbench.models.gloss import MODEL_DIR

TEXT = ["the cat and the dog ran to the barn; a cow, a hen and a pig slept there.",
        "verbs: run, eat, sleep, swim. adjectives: red, big, small, quick, slow!",
        "numbers 1 2 3 4 and symbols # % & make the bytes differ quite a lot."]
WORDS = ["cat", "dog", "cow", "hen", "pig", "barn", "run", "eat", "sleep", "swim", "red", "big",
         "small", "quick", "slow", "the", "and", "ran", "there", "make", "bytes", "symbols",
         "numbers", "verbs", "lot", "differ"]


def table():
    rows = []
    for i, w in enumerate(WORDS):
        rows.append({"lemma": w, "synset": f"{w}.n.01", "pos": ["noun", "verb", "adjective"][i % 3],
                     "lexname": f"noun.x{i % 4}", "domain": ["", "zoology.n.01", "law.n.01"][i % 3]})
    rows.append({"lemma": "\u00ff\u00fe", "synset": "unseen.n.01", "pos": "noun",
                 "lexname": "noun.x0", "domain": ""})  # bytes the text never holds
    return rows


@pytest.fixture(scope="module")
def amap(random_tiny):
    w = load_windows(random_tiny, text=TEXT, window=15, stride=15, bos=False)
    return build_amap(random_tiny, w, batch_size=4, progress=False, context_units=0, top_k=1)


@pytest.fixture(scope="module")
def result(random_tiny, amap):
    return semantics.analyze(random_tiny, amap, table=table(), tsne_points=20, prefix="",
                             tsne_iterations=250, n_permutations=49, max_lemmas=50)


def test_pool_is_the_mean_of_seen_piece_columns(random_tiny, amap):
    pieces = semantics.lemma_pieces(random_tiny.tokenizer, ["cat", "\u00ff"], "")
    vec, kept = semantics.pool(amap.means(), amap.keys(), pieces)
    means, counts = amap.at()  # dense over every id, by the AMAP's own lookup
    seen = [t for t in pieces[0] if counts[t] > 0]
    ref = torch.stack([means[:, t] for t in seen]).mean(0).float()
    torch.testing.assert_close(vec[:, 0], ref, atol=1e-6, rtol=1e-6)
    assert kept.tolist() == [True, False]
    assert (vec[:, 1] == 0).all()


def test_pipeline_counts_tests_and_figures(result, tmp_path):
    assert result.counts["lemmas"] == len(WORDS) + 1
    assert result.counts["dropped_unseen"] == 1
    assert {(t["layer"], t["label"]) for t in result.tests} == {
        (layer, kind) for layer in (0, 1) for kind in ("domain", "pos", "lexname")}
    for t in result.tests:
        assert t["n_permutations"] == 49
    domain = next(t for t in result.tests if t["label"] == "domain")
    assert domain["n_items"] == sum(1 for r in table()[:-1] if r["domain"])
    assert result.tsne.shape == (2, 20, 2)
    figs = result.figures(top=2)
    assert isinstance(figs["tests"], go.Figure) and "tsne_domain_layer1" in figs
    hover = figs["tsne_domain_layer0"].data[0].text[0]
    assert any(hover.startswith(w) for w in WORDS)
    path = result.save(tmp_path)
    assert path.name == "semantics.safetensors" and path.exists()
    from workbench.analyses.semantics import load

    back = load(tmp_path)
    assert back.tests == result.tests and back.rows == result.rows and back.layers == result.layers
    assert back.counts == result.counts and back.control == result.control
    assert torch.equal(back.vectors, result.vectors) and torch.equal(back.tsne, result.tsne)
    assert torch.equal(back.tsne_index, result.tsne_index)


def _lemma_vectors(random_tiny, amap, layer: int) -> dict[str, torch.Tensor]:
    """Each lemma's AMAP vector the naive way: a loop over its seen byte pieces."""
    means, counts = amap.at()
    out = {}
    for w in WORDS:
        ids = random_tiny.tokenizer(w, add_special_tokens=False)["input_ids"]
        seen = [t for t in ids if counts[t] > 0]
        out[w] = torch.stack([means[layer, t].double() for t in seen]).mean(0)
    return out


def _planted_table(labels: dict[str, str]) -> list[dict]:
    return [{**r, "lexname": labels.get(r["lemma"], "noun.x0")} for r in table()]


def test_a_label_that_predicts_the_amap_gets_a_small_p(random_tiny, amap):
    """Planted structure: lemmas labelled by which side of the median their own AMAP vector's
    projection falls; the permutation test must find it at the floor (1/(49+1))."""
    import numpy as np

    vecs = _lemma_vectors(random_tiny, amap, 1)
    x = torch.stack(list(vecs.values())).numpy()
    sd = x.std(0, ddof=1)
    z = np.where(sd > 0, (x - x.mean(0)) / np.where(sd > 0, sd, 1), 0)  # per unit, as the study
    pc1 = np.linalg.svd(z, full_matrices=False)[2][0]  # the main axis of variation
    labels = {w: "noun.hi" if float(row @ pc1) >= 0 else "noun.lo" for w, row in zip(vecs, z, strict=True)}
    r = semantics.analyze(random_tiny, amap, table=_planted_table(labels), tsne_points=10,
                          prefix="", tsne_iterations=250, n_permutations=49, max_lemmas=50,
                          layers=[1])
    planted = next(t for t in r.tests if t["label"] == "lexname")
    assert planted["p_value"] <= 0.04


def test_a_random_label_gets_a_uniform_p(random_tiny, amap):
    """Labels drawn at random, 12 times: p-values spread over (0, 1], not piled near 0."""
    import random

    ps = []
    for seed in range(12):
        rng = random.Random(seed)
        labels = {w: rng.choice(["noun.a", "noun.b"]) for w in WORDS}
        r = semantics.analyze(random_tiny, amap, table=_planted_table(labels), tsne_points=10,
                              prefix="", tsne_iterations=250, n_permutations=49,
                              max_lemmas=50, layers=[1], seed=seed)
        ps.append(next(t for t in r.tests if t["label"] == "lexname")["p_value"])
    assert sum(p <= 0.05 for p in ps) <= 3  # expected 0.6 of 12 under the null
    assert 0.2 <= sorted(ps)[len(ps) // 2] <= 0.8


def test_amap_from_another_model_is_refused(amap):
    from workbench.models.random_tiny import random_tiny as make

    with pytest.raises(WorkbenchError, match="another model or tokenizer"):
        semantics.analyze(make(seed=3), amap, table=table())


def test_rows_from_synsets_dedupes_and_maps_satellites():
    def syn(name, lemma, pos, lex, domain=None):
        dom = [SimpleNamespace(name=lambda: domain)] if domain else []
        return SimpleNamespace(lemmas=lambda: [SimpleNamespace(name=lambda: lemma)],
                               name=lambda: name, pos=lambda: pos, lexname=lambda: lex,
                               topic_domains=lambda: dom)

    rows = semantics.rows_from_synsets([
        syn("bank.n.01", "bank", "n", "noun.object", "geography.n.01"),
        syn("bank.v.01", "bank", "v", "verb.motion"),
        syn("red.s.01", "red_hot", "s", "adj.all"),
    ])
    assert [r["lemma"] for r in rows] == ["bank", "red hot"]
    assert rows[0]["domain"] == "geography.n.01" and rows[1]["pos"] == "adjective"


@pytest.fixture(scope="module")
def gloss_lm():
    if not (MODEL_DIR / "model.safetensors").exists():
        pytest.skip(f"tiny-gloss-lm weights not built yet ({MODEL_DIR})")
    from workbench import load_model

    return load_model("tiny-gloss-lm", device="cpu")


def test_study_on_tiny_gloss_lm_slice(gloss_lm):
    from workbench.wordnet import open_wordnet

    w = load_windows(gloss_lm, dataset="wordnet-glosses", limit=200, window=15, stride=15,
                     bos=False)
    amap = build_amap(gloss_lm, w, batch_size=16, progress=False, context_units=1)
    assert all(amap.invariants.values())
    wn = open_wordnet()
    synsets = [s for pos in "nvar" for s in islice(wn.all_synsets(pos), 800)]
    rows = semantics.rows_from_synsets(synsets)
    r = semantics.analyze(gloss_lm, amap, table=rows, layers=[0, 3], max_lemmas=400,
                          tsne_points=100, tsne_iterations=250, n_permutations=49)
    assert r.counts["kept"] > 100 and {t["label"] for t in r.tests} >= {"pos", "lexname"}
    assert all(0 < t["p_value"] <= 1 for t in r.tests)


def test_p_values_at_the_permutation_floor_read_as_a_bound():
    assert semantics.p_text(1 / 50, 49) == "p < 1/50"
    assert semantics.p_text(2 / 50, 49) == "p = 0.04"
    assert semantics.p_text(1 / 1001, 1000) == "p < 1/1001"


def test_low_coverage_warns_and_the_page_says_so(random_tiny, amap):
    """26 lemmas the text holds among 200 it never saw: 11% coverage, a warning and a note."""
    from workbench.views import semantics as view

    unseen = [{"lemma": "\u00ff" * (2 + i % 3) + chr(0x100 + i), "synset": f"u{i}.n.01",
               "pos": "noun", "lexname": "noun.x0", "domain": ""} for i in range(200)]
    with pytest.warns(UserWarning, match=r"only 26 of 227 lemmas \(11%\)"):
        r = semantics.analyze(random_tiny, amap, table=table() + unseen, tsne_points=10,
                              prefix="", tsne_iterations=250, n_permutations=19, max_lemmas=50,
                              layers=[1])
    html = "".join(str(x) for x in view.section(r).items if isinstance(x, str))
    assert "Low coverage" in html and "Confound" in html and "random-init control" in html


def test_random_init_control_runs_the_same_pipeline(random_tiny, amap):
    """The control: a random model of the same config and tokenizer (other weights), its AMAP
    over the same windows with the same settings, the same tests; ``compare`` applies the rule
    (trained p below alpha and a statistic at least twice the control's) row by row."""
    from workbench.identity import weights_hash

    ctrl_model = semantics.random_init(random_tiny, seed=7)
    assert ctrl_model.cfg.d_mlp == random_tiny.cfg.d_mlp and ctrl_model.tokenizer is random_tiny.tokenizer
    assert weights_hash(ctrl_model) != weights_hash(random_tiny)
    w = load_windows(random_tiny, text=TEXT, window=15, stride=15, bos=False)
    opts = dict(table=table(), tsne_points=10, prefix="", tsne_iterations=250,
                n_permutations=19, max_lemmas=50, layers=[1])
    trained = semantics.analyze(random_tiny, amap, **opts)
    c_amap, ctrl = semantics.control(random_tiny, amap, w, seed=7, progress=False, **opts)
    assert c_amap.layers == amap.layers and torch.equal(c_amap.keys(), amap.keys())
    assert torch.equal(c_amap.counts(), amap.counts())  # the same positions, other activations
    rows = semantics.compare(trained, ctrl, alpha=0.5)
    assert len(rows) == len(trained.tests) == len(ctrl.tests)
    for r, t, c in zip(rows, trained.tests, ctrl.tests, strict=True):
        want = t["p_value"] < 0.5 and t["statistic"] >= 2 * max(c["statistic"], 0.0)
        assert r["supported"] == ("yes" if want else "no")
        assert (r["T trained"], r["T control"]) == (t["statistic"], c["statistic"])
