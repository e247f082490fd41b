"""Per-tenant retrieval: files, vector stores, chunking, embeddings, hybrid search, citations.

Planned (see ROADMAP): OpenAI's Files and Vector Stores API over pgvector. Free of Litestar; raises
:class:`retrieval.errors.RetrievalError`.
"""
