"""Command registration (placeholder until its owner adds commands)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add this module's commands to the root parser (none yet)."""
