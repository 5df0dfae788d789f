"""edgekit.federated: asynchronous cloned/buffered-distillation edge learning on Flower.

Light on purpose: importing this package imports neither torch nor flwr. See
``server_app`` (ServerApp), ``client_app`` (ClientApp), ``simulate`` (virtual clock),
``deploy`` (SuperLink/SuperNode processes) and docs/federated.md.
"""
__all__ = ["simulate"]


def simulate(*args, **kwargs):
    """Run one virtual-clock simulation (see :func:`edgekit.federated.simulate.simulate`)."""
    from .simulate import simulate as _simulate

    return _simulate(*args, **kwargs)
