"""Dynamic token gating for BERT-family encoders: the gated model, training, export to a multi-graph
bundle, the rotten-tomatoes data and labelled text files. The torch-free text pipeline lives in
edgekit.runtimes.pipelines.tokengate."""
