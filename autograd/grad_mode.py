"""Grad mode (an API convenience, out of the learner's path): ``no_grad()`` turns graph recording off.

``Function.apply`` asks ``is_grad_enabled()`` before it records a node; inside ``no_grad()`` it records none, so
evaluation, decoding and optimizer steps keep no saved arrays alive.
"""
import contextlib

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Context manager: inside it, operations record no graph (for evaluation, decoding and optimizer steps)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled():
    """True unless inside ``no_grad()``."""
    return _grad_enabled
