"""PPP — prototype-based personalized pruning: the gated networks, training, personalization in
PyTorch, export to a personalizable bundle, the built-in models and the benchmark machinery. The
torch-free personalization of an exported bundle lives in edgekit.runtimes.pipelines.ppp."""
