"""Weights that live on disk ("LLM in a flash"): the store format, its reader, the neuron window cache, activation
sparsity and its predictors, and the streamed FFN that ties them together under a memory budget."""
