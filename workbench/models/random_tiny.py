"""``random-tiny``: a seeded, randomly initialised GPT-style model for tests. Never pretrained.

It uses a byte-level tokenizer (256 byte tokens + ``<|endoftext|>`` as BOS/EOS/pad), written
once into the workbench cache as a folder, because HookedTransformer rejects in-memory tokenizers.
"""

import warnings
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.paths import cache_dir

SPECIAL = "<|endoftext|>"


def byte_tokenizer_dir() -> Path:
    """A folder holding a byte-level tokenizer (257 tokens) that ``AutoTokenizer`` loads."""
    folder = cache_dir("tokenizers", "byte-level-v1")
    if (folder / "tokenizer.json").exists():
        return folder
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab[SPECIAL] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL, pad_token=SPECIAL
    )
    tmp = folder.with_name(folder.name + ".tmp")
    fast.save_pretrained(tmp)
    for f in tmp.iterdir():  # move file by file: the folder may be shared by parallel tests
        f.replace(folder / f.name)
    tmp.rmdir()
    return folder


def random_tiny(
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    d_mlp: int = 256,
    n_ctx: int = 128,
    d_vocab: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HookedTransformer:
    """A random-init GPT-style HookedTransformer (LN, GELU) with the byte tokenizer.

    ``d_vocab`` larger than the tokenizer's 257 is allowed (for vocab-scaling benchmarks); the
    extra ids are never produced by the tokenizer.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(byte_tokenizer_dir()))
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_model // n_heads,
        d_mlp=d_mlp,
        n_ctx=n_ctx,
        d_vocab=d_vocab or len(tokenizer),
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
        device=device,
        dtype=dtype,
        default_prepend_bos=True,
        model_name="random-tiny",
    )
    with warnings.catch_warnings():  # TL 3.9 deprecation notice: 4.x drops this class
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=True)
    model.eval()
    model.workbench_info = {"weight_processing": "none"}
    from workbench.models import unembed_without_copy

    return unembed_without_copy(model)  # as load_model's: benchmarks time an efficient forward
