"""Fused operations: one Function each, forward and hand-written backward together, and a ``*_reference`` twin
composed from engine primitives so that tests can show fused = composed = numerical."""
