"""Knowledge bases: document parsing, chunking, embeddings, hybrid retrieval, cited answers.

No FastAPI, Typer or database session here: services/kbs.py wires this package to the store.
"""
