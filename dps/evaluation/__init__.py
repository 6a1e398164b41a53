"""Evaluation: the methods x tasks runner behind the paper's tables."""
