"""The photo gallery's FAISS index: scan, embed (ONNX photo encoder), index, store, rebuild.

No PyTorch here: the gallery is embedded by the exported encoders (``model.encoder``).
"""
