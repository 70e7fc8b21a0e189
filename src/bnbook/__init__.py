"""Helper package of the batch-normalization book."""
