"""Offline WordNet 3.0 (``workbench.wordnet``) and the gloss corpus built from it."""

from pathlib import Path

import pytest

from workbench.corpus import gloss_documents, is_validation, render_synset
from workbench.errors import WorkbenchError
from workbench.wordnet import (
    LEXNAMES,
    REQUIRED_FILES,
    lexnames_text,
    load_wordnet,
    open_wordnet,
    prepare_wordnet_dir,
    resolve_wordnet_dir,
)

N_SYNSETS = 117_659


def fake_wordnet(folder: Path, with_lexnames: bool = False) -> Path:
    folder.mkdir(parents=True)
    for name in REQUIRED_FILES:
        (folder / name).write_text(f"{name}\n")
    if with_lexnames:
        (folder / "lexnames").write_text(lexnames_text())
    return folder


# --- resolution order ---------------------------------------------------------------------


def test_env_var_wins(tmp_path):
    env = fake_wordnet(tmp_path / "env")
    nltk_root = tmp_path / "nltk"
    fake_wordnet(nltk_root / "corpora" / "wordnet")
    debian = fake_wordnet(tmp_path / "debian")
    got = resolve_wordnet_dir({"WORDNET_DIR": str(env)}, [nltk_root], debian)
    assert got == ("env", env)


def test_nltk_data_before_debian(tmp_path):
    nltk_root = tmp_path / "nltk"
    corpus = fake_wordnet(nltk_root / "corpora" / "wordnet")
    debian = fake_wordnet(tmp_path / "debian")
    got = resolve_wordnet_dir({}, [tmp_path / "elsewhere", nltk_root], debian)
    assert got == ("nltk", corpus)


def test_debian_last(tmp_path):
    debian = fake_wordnet(tmp_path / "debian")
    assert resolve_wordnet_dir({}, [tmp_path / "nltk"], debian) == ("debian", debian)


def test_nothing_found_says_how_to_install(tmp_path):
    with pytest.raises(WorkbenchError, match="apt-get install.*wordnet-base"):
        resolve_wordnet_dir({}, [tmp_path / "nltk"], tmp_path / "debian")


def test_empty_wordnet_dir_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WorkbenchError, match="WORDNET_DIR.*not a WordNet 3.0") as err:
        resolve_wordnet_dir({"WORDNET_DIR": str(empty)})
    assert "data.noun" in str(err.value)
    monkeypatch.setenv("WORDNET_DIR", str(empty))
    with pytest.raises(WorkbenchError, match="WORDNET_DIR"):
        load_wordnet()


# --- the lexnames mirror -------------------------------------------------------------------


def test_lexnames_follow_the_man_page():
    lines = lexnames_text().splitlines()
    assert len(lines) == len(LEXNAMES) == 45
    assert lines[0] == "00\tadj.all\t3"
    assert lines[5] == "05\tnoun.animal\t1"
    assert lines[44] == "44\tadj.ppl\t3"


def test_mirror_adds_lexnames_and_is_reused(tmp_path):
    source = fake_wordnet(tmp_path / "src")
    mirror = prepare_wordnet_dir(source, cache=tmp_path / "cache")
    assert mirror == tmp_path / "cache" / "corpora" / "wordnet"
    assert (mirror / "lexnames").read_text() == lexnames_text()
    for name in REQUIRED_FILES:  # real files: NLTK refuses symlinks out of its root
        assert not (mirror / name).is_symlink()
        assert (mirror / name).read_text() == f"{name}\n"
    stamp = (mirror / "lexnames").stat().st_mtime_ns
    assert prepare_wordnet_dir(source, cache=tmp_path / "cache") == mirror
    assert (mirror / "lexnames").stat().st_mtime_ns == stamp  # not rebuilt


def test_folder_with_lexnames_is_used_as_is(tmp_path):
    source = fake_wordnet(tmp_path / "src", with_lexnames=True)
    assert prepare_wordnet_dir(source, cache=tmp_path / "cache") == source.resolve()


# --- the real database -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def wn():
    return open_wordnet()


def test_open_wordnet_is_cached(wn):
    assert open_wordnet() is wn
    assert wn.get_version() == "3.0"


def test_synset_count(wn):
    assert sum(1 for _ in wn.all_synsets()) == N_SYNSETS


@pytest.mark.parametrize(
    ("name", "lexname"),
    [("dog.n.01", "noun.animal"), ("run.v.01", "verb.motion"), ("able.a.01", "adj.all"),
     ("quickly.r.01", "adv.all"), ("entity.n.01", "noun.Tops")],
)
def test_lexnames_map_right(wn, name, lexname):
    assert wn.synset(name).lexname() == lexname


def test_synset_lookups_work_offline(wn, network_attempts):
    dog = wn.synset("dog.n.01")
    assert "domestic_dog" in dog.lemma_names()
    assert wn.synset("canine.n.02") in dog.hypernyms()
    assert wn.morphy("dogs") == "dog"
    assert network_attempts == []


# --- the gloss corpus -------------------------------------------------------------------------


def test_render_synset():
    doc = render_synset(["cat", "true_cat"], "feline mammal\n", ["the cat sat", "a cat"])
    assert doc == 'cat, true cat: feline mammal; "the cat sat"; "a cat"'


def test_split_is_by_synset_hash():
    assert is_validation("n", 2121620) is False  # cat.n.01
    flags = [is_validation("n", offset) for offset in range(100_000, 150_000)]
    assert 0.015 < sum(flags) / len(flags) < 0.025  # 1 in 50


def test_corpus_splits():
    train = list(gloss_documents("train"))
    val = list(gloss_documents("validation"))
    everything = list(gloss_documents("all"))
    assert len(everything) == N_SYNSETS == len(train) + len(val)
    assert 2_200 < len(val) < 2_700
    assert list(gloss_documents("validation")) == val  # deterministic
    assert not any("\n" in doc for doc in everything)
    cat = next(d for d in train if d.startswith("cat, true cat: "))
    assert cat.startswith("cat, true cat: feline mammal usually having thick soft fur")
    assert any(d.startswith("dog, domestic dog, Canis familiaris: ") and '; "' in d for d in train)


def test_unknown_split():
    with pytest.raises(WorkbenchError, match="unknown split"):
        next(gloss_documents("test"))
