"""The offline builder, two rooms under one CLI (``python -m index_builder``):

``training``: data sets, backbone features, IIAE training and evaluation (PyTorch);
``indexing``: the photo gallery, embedded by the exported ONNX photo encoder into a store
(``gallery_store``), no PyTorch. Export to ONNX is ``model.export``.
"""
