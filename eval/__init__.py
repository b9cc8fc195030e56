"""Evaluation: retrieval (FAISS), metrics, LRS2 lip-reading evaluation and query tools."""
