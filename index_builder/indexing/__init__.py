"""The photo gallery's builder: scan, embed (ONNX photo encoder), rebuild into a store.

The store itself (the FAISS index directory, Qdrant) is ``gallery_store``, shared with the
service. No PyTorch here: the gallery is embedded by the exported encoders (``model.encoder``).
"""
