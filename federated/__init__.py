"""edgekit.federated: asynchronous cloned/buffered-distillation edge learning on Flower.

Light on purpose: importing this package imports neither torch nor flwr. Modules:
``server_app`` (Flower ServerApp, the async loop), ``client_app`` (Flower ClientApp),
``distill`` (buffered distillation, teacher screening), ``strategies`` (aggregators, FedAvg),
``simulate`` (virtual-clock engine), ``deploy`` (SuperLink/SuperNode processes),
``checkpoint`` (atomic server state). See docs/federated.md.
"""
