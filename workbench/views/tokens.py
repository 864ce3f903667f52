"""One way to show a token, everywhere a view shows one.

A token is shown as its decoded text (never the tokenizer's raw piece: no GPT-2 ``Ġ``, no
SentencePiece ``▁``):

- ``label(text)``: a token on its own (axis ticks, heatmap cells, tables, hovers): a space is
  ``␣``, a newline ``⏎``, a tab ``⇥``, other control characters ``\\xNN``, the empty string ``∅``;
- ``running(text)``: a token inside running text (contexts, the NMF text): spaces stay spaces
  (the page keeps them with ``white-space: pre-wrap``), newlines and tabs as above.

Both have an ``html_`` form that escapes for HTML and for plotly, whose tick labels, cell texts
and hovers read a subset of HTML (``<b>x</b>`` would render bold).

>>> label(" the"), label("\\n"), label("")
('␣the', '⏎', '∅')
>>> html_label("<b>x</b>")
'&lt;b&gt;x&lt;/b&gt;'
>>> running(" the cat")
' the cat'
"""

from __future__ import annotations

import html

_CONTROL = {"\n": "⏎", "\t": "⇥", "\r": "␍"}


def _controls(text: str) -> str:
    out = []
    for c in text:
        if c in _CONTROL:
            out.append(_CONTROL[c])
        elif ord(c) < 32 or ord(c) == 127:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return "".join(out)


def label(text: str) -> str:
    """A token on its own, whitespace made visible."""
    if text == "":
        return "∅"
    return _controls(text.replace(" ", "␣"))


def running(text: str) -> str:
    """A token in running text: spaces kept, newlines and tabs made visible."""
    return _controls(text)


def html_label(text: str) -> str:
    """``label`` escaped for HTML and plotly (quotes kept: plotly shows ``&quot;`` literally)."""
    return html.escape(label(text), quote=False)


def html_running(text: str) -> str:
    return html.escape(running(text), quote=False) or "&#8203;"


def short(text: str, width: int = 6) -> str:
    """``label`` cut to ``width`` characters (``…`` marks the cut), for fixed-width cells."""
    shown = label(text)
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def html_label_short(text: str, width: int = 6) -> str:
    """``short`` escaped for HTML and plotly."""
    return html.escape(short(text, width), quote=False)


def decode_each(tokenizer, ids) -> list[str]:
    """The decoded text of each token id on its own."""
    return [tokenizer.decode([int(i)]) for i in ids]


MAX_TOKEN_TICKS = 150  # beyond this many positions, plotly's tick labels cost seconds each load


def position_ticks(labels: list[str], positions: list[int] | None = None,
                   max_numbers: int = 20) -> dict:
    """A position axis: each token as its tick label (``html_label``-escaped ``labels``) when
    there are few, else position numbers, at most ``max_numbers`` (the tokens are then in the hovers
    and, for the lens grid, in its input row): 1,000 angled token ticks take plotly ~10 s."""
    positions = list(range(len(labels))) if positions is None else list(positions)
    if len(positions) <= MAX_TOKEN_TICKS:
        return {"tickmode": "array", "tickvals": positions, "ticktext": labels,
                "tickangle": -60 if len(positions) > 8 else 0}
    steps = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
    step = next((s for s in steps if len(positions) / s <= max_numbers), steps[-1])
    return {"tickmode": "linear", "tick0": 0, "dtick": step, "tickangle": 0}
