"""rmrun: reward-model training for RLHF from a declarative recipe.

Importing the package is cheap; torch and ColossalAI load only when a run starts.
"""

__version__ = "0.1.0"
