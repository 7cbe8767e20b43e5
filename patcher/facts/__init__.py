"""Real facts from installed packages, phrased as prompts for the production models."""
from .bank import Fact, all_facts, split_facts

__all__ = ["Fact", "all_facts", "split_facts"]
