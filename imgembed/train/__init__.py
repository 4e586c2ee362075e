"""Fitting heads: the training loop, losses, labelled data, the feature cache, closed forms, evaluation."""
