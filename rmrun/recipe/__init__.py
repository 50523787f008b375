"""The recipe language: TOML → frozen, typed sections. Standard library only."""

from rmrun.recipe.loader import RecipeError, load_recipe, recipe_to_dict
from rmrun.recipe.plan import Plan, make_plan
from rmrun.recipe.schema import Recipe
from rmrun.recipe.validate import World, environment_problems

__all__ = [
    "Plan",
    "Recipe",
    "RecipeError",
    "World",
    "environment_problems",
    "load_recipe",
    "make_plan",
    "recipe_to_dict",
]
