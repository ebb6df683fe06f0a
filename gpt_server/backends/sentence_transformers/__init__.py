"""sentence-transformers backend: embeddings, rerank, moderation/classification."""
