"""Views: plotly figure builders and self-contained HTML. Views never compute statistics."""
