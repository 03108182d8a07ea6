"""IIAE, its backbones, preprocessing and ONNX export.

Importing this package loads no PyTorch: ``model.preprocess`` serves without it.
"""
