"""Training recipes for the workbench's embedded models (``tiny-gloss-lm``) and their baselines."""
