"""Answers over a whole collection's vectors: the k-NN vote, retrieval metrics, duplicates, tidying. No torch."""
