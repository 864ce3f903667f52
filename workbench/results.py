"""What every analysis result shares in Python: a short ``repr``, ``_repr_html_`` for notebooks,
``summary()`` (key numbers, JSON-ready), ``figures()`` (plotly, by name) and ``to_frame()`` (a
pandas table of the result's main per-layer or per-item numbers).

>>> r = lens.analyze(model, windows)          # doctest: +SKIP
>>> r                                         # LensResult(mode='final_ln', positions=54, ...)  # doctest: +SKIP
>>> r.to_frame().head()                       # one row per layer                      # doctest: +SKIP

A result holds tensors of up to gigabytes; its repr never prints them (a dataclass repr of a
lens result was 57,855 characters).
"""

from __future__ import annotations

import html

MAX_REPR = 320  # characters


def _short(value, width: int = 60) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        items = [_short(v, 16) for v in value[:4]]
        more = f", … {len(value)} items" if len(value) > 4 else ""
        return "[" + ", ".join(items) + more + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v, 16)}" for k, v in list(value.items())[:3]) + (
            ", …" if len(value) > 3 else "") + "}"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


class ResultMixin:
    """Mixed into every result class (declared ``@dataclass(repr=False)``). Subclasses define
    ``summary()``, ``figures()`` and ``to_frame()``."""

    def summary(self) -> dict:  # pragma: no cover - every result defines its own
        raise NotImplementedError

    def to_frame(self):  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        parts, size = [], len(type(self).__name__) + 2
        for key, value in self.summary().items():
            part = f"{key}={_short(value)}"
            if size + len(part) > MAX_REPR:
                parts.append("…")
                break
            parts.append(part)
            size += len(part) + 2
        return f"{type(self).__name__}({', '.join(parts)})"

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                       f"<td style='text-align:left'>{html.escape(_short(v, 120))}</td></tr>"
                       for k, v in self.summary().items())
        try:
            frame = self.to_frame()
            table = frame.to_html(max_rows=20, max_cols=12, float_format=lambda x: f"{x:.4g}")
        except Exception as exc:  # a notebook view must not fail on a table
            table = f"<p>(no table: {html.escape(str(exc))})</p>"
        names = ", ".join(html.escape(n) for n in self.figures())
        return (f"<div><b>{type(self).__name__}</b><table>{rows}</table>{table}"
                f"<p>figures(): {names}</p></div>")
