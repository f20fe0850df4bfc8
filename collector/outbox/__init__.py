"""Transactional outbox: removal events written with the deletions they report."""
