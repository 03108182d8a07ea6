"""The sketch search HTTP service: FastAPI + uvicorn over the exported ONNX encoders and the
gallery's FAISS index. No PyTorch: ``python -m service`` runs on the serving image."""
