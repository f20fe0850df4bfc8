"""The demo: a realistic registry seeded, partly expired and deleted, then collected."""
