"""The intake: requests topic in, durable work (``gc.request``) or dead letters out."""
