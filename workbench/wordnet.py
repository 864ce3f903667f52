"""Princeton WordNet 3.0, offline, through NLTK's ``WordNetCorpusReader``.

1. ``wn = open_wordnet()`` finds a WordNet 3.0 database folder (see :func:`resolve_wordnet_dir`).
2. A folder without the ``lexnames`` file (Debian's ``wordnet-base`` ships none) is mirrored into
   the workbench cache (copies) plus a ``lexnames`` written from lexnames(5WN),
   and the cache folder is added to ``nltk.data.path``.
3. The reader never reaches for NLTK's downloader: ``map_wn`` (which cross-maps WordNet versions
   through ``index.sense`` files that Debian lacks) is overridden to "no mapping".
4. ``wn.synset("dog.n.01").lexname() == "noun.animal"``.

Resolution order: ``$WORDNET_DIR``, then NLTK's data folders (``corpora/wordnet``), then Debian's
``/usr/share/wordnet``. A ``WORDNET_DIR`` that is set but unusable is an error, not a fallback:
a user who points at a folder means that folder.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.errors import WorkbenchError
from workbench.paths import cache_dir

if TYPE_CHECKING:
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

DEBIAN_DIR = Path("/usr/share/wordnet")
ENV_VAR = "WORDNET_DIR"
#: Files that make a folder a WordNet database (``lexnames`` may be written by us).
REQUIRED_FILES = tuple(
    f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv")
)
INSTALL_HINT = (
    "Install Princeton WordNet 3.0: `apt-get install -y --no-install-recommends wordnet-base` "
    "(Debian/Ubuntu, goes to /usr/share/wordnet), or `python -m nltk.downloader wordnet` where "
    "the network is reachable, or set WORDNET_DIR to a folder holding data.noun, index.noun, ..."
)

# lexnames(5WN): file number, lexicographer file name, syntactic category (1 noun .. 4 adverb).
LEXNAMES: tuple[tuple[str, int], ...] = (
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1),
    ("noun.animal", 1), ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1),
    ("noun.cognition", 1), ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1),
    ("noun.food", 1), ("noun.group", 1), ("noun.location", 1), ("noun.motive", 1),
    ("noun.object", 1), ("noun.person", 1), ("noun.phenomenon", 1), ("noun.plant", 1),
    ("noun.possession", 1), ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1),
    ("noun.shape", 1), ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1),
    ("verb.body", 2), ("verb.change", 2), ("verb.cognition", 2), ("verb.communication", 2),
    ("verb.competition", 2), ("verb.consumption", 2), ("verb.contact", 2), ("verb.creation", 2),
    ("verb.emotion", 2), ("verb.motion", 2), ("verb.perception", 2), ("verb.possession", 2),
    ("verb.social", 2), ("verb.stative", 2), ("verb.weather", 2), ("adj.ppl", 3),
)


def lexnames_text() -> str:
    """The ``lexnames`` file of WordNet 3.0 as lexnames(5WN) documents it (tab-separated)."""
    return "".join(f"{i:02d}\t{name}\t{cat}\n" for i, (name, cat) in enumerate(LEXNAMES))


def _is_wordnet_dir(folder: Path) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in REQUIRED_FILES)


def _nltk_wordnet_dirs(nltk_paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Unzipped ``corpora/wordnet`` folders under NLTK's data paths (zips are not used)."""
    return [Path(p) / "corpora" / "wordnet" for p in nltk_paths]


def resolve_wordnet_dir(
    environ: Mapping[str, str] | None = None,
    nltk_paths: Sequence[str | os.PathLike] | None = None,
    debian_dir: Path = DEBIAN_DIR,
) -> tuple[str, Path]:
    """The WordNet database folder to read and where it came from: ``("env"|"nltk"|"debian", path)``.

    The arguments default to the live environment (``os.environ``, ``nltk.data.path``); tests pass
    their own to check the order.

    >>> source, folder = resolve_wordnet_dir()  # doctest: +SKIP
    >>> source, folder.name  # doctest: +SKIP
    ('debian', 'wordnet')
    """
    environ = os.environ if environ is None else environ
    explicit = environ.get(ENV_VAR)
    if explicit:
        folder = Path(explicit).expanduser()
        if not _is_wordnet_dir(folder):
            missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
            raise WorkbenchError(
                f"{ENV_VAR}={explicit!r} is not a WordNet 3.0 database folder "
                f"(missing: {', '.join(missing)}). Point {ENV_VAR} at the folder that holds "
                f"data.noun and index.noun, or unset it to use the defaults. {INSTALL_HINT}"
            )
        return "env", folder
    if nltk_paths is None:
        import nltk

        nltk_paths = list(nltk.data.path)
    for folder in _nltk_wordnet_dirs(nltk_paths):
        if _is_wordnet_dir(folder):
            return "nltk", folder
    if _is_wordnet_dir(debian_dir):
        return "debian", debian_dir
    raise WorkbenchError(f"Princeton WordNet 3.0 was not found offline. {INSTALL_HINT}")


def _mirror_is_current(mirror: Path, source: Path) -> bool:
    if not (mirror / "lexnames").is_file():
        return False
    for f in source.iterdir():
        copy = mirror / f.name
        if not copy.is_file() or copy.stat().st_size != f.stat().st_size:
            return False
    return True


def prepare_wordnet_dir(source: Path, cache: Path | None = None) -> Path:
    """A folder NLTK can read: ``source`` itself if it has ``lexnames``, else a cached mirror.

    The mirror is ``<cache>/corpora/wordnet``: a copy of every file of ``source`` (28 MB) plus a
    ``lexnames`` written from lexnames(5WN). Copies, not links: NLTK >= 3.9 refuses a corpus
    file that is a symlink out of the reader's root or has more than one hard link. The mirror
    is built in a private temporary folder and renamed into place, so parallel processes never
    see a half-built one.
    """
    source = source.resolve()
    if (source / "lexnames").is_file():
        return source
    cache = cache_dir("wordnet") if cache is None else cache
    mirror = cache / "corpora" / "wordnet"
    if _mirror_is_current(mirror, source):
        return mirror
    tmp = mirror.with_name(f"wordnet.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in source.iterdir():
        if f.is_file():
            shutil.copyfile(f, tmp / f.name)
    (tmp / "lexnames").write_text(lexnames_text(), encoding="utf-8")
    if mirror.exists():
        stale = mirror.with_name(f"wordnet.stale-{os.getpid()}")
        try:
            mirror.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        except FileNotFoundError:  # another process replaced it first
            pass
    try:
        tmp.rename(mirror)
    except OSError:  # another process won the race; its mirror is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    return mirror


def load_wordnet(folder: Path | None = None) -> WordNetCorpusReader:
    """A fresh ``WordNetCorpusReader`` over ``folder`` (default: :func:`resolve_wordnet_dir`)."""
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError as err:
        raise WorkbenchError(
            "WordNet needs NLTK: `pip install 'workbench[wordnet]'` (or `pip install nltk`)."
        ) from err

    class OfflineWordNetReader(WordNetCorpusReader):
        """NLTK's reader without the cross-version map (it would look for ``index.sense``)."""

        def map_wn(self, version: str = "wordnet") -> None:
            return None

    if folder is None:
        _, folder = resolve_wordnet_dir()
    elif not _is_wordnet_dir(Path(folder)):
        raise WorkbenchError(f"{folder} is not a WordNet 3.0 database folder. {INSTALL_HINT}")
    readable = prepare_wordnet_dir(Path(folder))
    # NLTK only opens files under a folder on its data path; ``<root>/corpora/wordnet`` is
    # also where its lazy loaders look for a corpus named "wordnet".
    is_corpus_layout = readable.name == "wordnet" and readable.parent.name == "corpora"
    root = str(readable.parent.parent if is_corpus_layout else readable)
    if root not in nltk.data.path:
        nltk.data.path.append(root)
    import warnings

    with warnings.catch_warnings():  # "multilingual functions are not available": expected
        warnings.simplefilter("ignore", UserWarning)
        return OfflineWordNetReader(str(readable), omw_reader=None)


@functools.cache
def open_wordnet() -> WordNetCorpusReader:
    """The process-wide WordNet reader (loaded once; ~2 s and ~100 MB the first time)."""
    return load_wordnet()
