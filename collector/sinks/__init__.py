"""Downstream consumers of the removals topic: the blob deleter and the audit replay."""
