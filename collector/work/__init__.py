"""Durable work between the intake and the engine: the ``gc.request`` queue and its workers."""
