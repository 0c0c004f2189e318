"""The Metaflow cards of every step: components built from plain data, and what each step shows."""
