"""The gallery's vector store, shared by the builder (``index_builder``) and the service.

``base``: the interface and what a version holds; ``faiss_store``: the FAISS engine over
``versions`` (a versioned index directory); ``qdrant_store``: the Qdrant engine;
``faiss_index``: which FAISS index a gallery gets; ``settings``: ``SBIR_STORE`` and the Qdrant
location; ``stores.open_store``: the engine the settings name; ``photos``: file names, hashes
and the pixel limit both sides use.
"""
