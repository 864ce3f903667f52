"""workbench: a TransformerLens research workbench for mechanistic interpretability.

1. ``model = workbench.load_model("tiny-gloss-lm")`` (offline) or any TransformerLens name.
2. ``windows = workbench.data.from_text("some text", model.tokenizer)`` (or a file, JSONL, dataset).
3. Run an analysis (``workbench.analyses.*``): one streaming pass, mergeable accumulators.
4. Read the result's tensors, call ``.figures()`` (plotly), or save the artifacts (safetensors + JSON).
"""

from workbench.errors import OfflineError, WorkbenchError
from workbench.models import list_models, load_model

__version__ = "0.1.0"

__all__ = ["OfflineError", "WorkbenchError", "__version__", "list_models", "load_model"]
