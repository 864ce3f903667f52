"""Pure typed kernels and mergeable accumulators (see shared/DESIGN.md, layer ``kernels``)."""
