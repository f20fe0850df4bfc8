"""Transactional outbox: removal events written with the deletions they report, and the
relay that publishes them to Kafka."""
