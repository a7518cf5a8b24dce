"""Small argparse helpers shared by the demos."""
import argparse


def positive_int(text):
    """argparse type: an int >= 1 (ArgumentTypeError otherwise)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
