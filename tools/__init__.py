"""Build and test tooling of the book (not imported by the chapters)."""
