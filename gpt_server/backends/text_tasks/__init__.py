"""What embeddings, rerank and classification engines share: the task layer over three
primitives (``base.TextTaskBackend``) and the wire bodies it builds (``results``)."""
