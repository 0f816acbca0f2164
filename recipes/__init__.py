"""The recipe schema (pydantic) and the shipped YAML recipes."""

from recipes.load import RECIPES_DIR, list_recipes, load_recipe
from recipes.schema import Recipe

__all__ = ["RECIPES_DIR", "Recipe", "list_recipes", "load_recipe"]
