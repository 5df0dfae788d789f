"""Model compression: PPP (prototype-based personalized pruning). Light: no torch at import.

    from edgekit.compress import ppp          # PyTorch path (imports torch)
    from edgekit.compress import ppp_onnx     # torch-free bundle personalization
"""
