"""A model's categories by class index or by name, as the reference 0.27's ``detector/categories.py``.

A model emits class indices (or names); only ``ModelInformation.categories`` gives them a meaning. Both lookups
raise :class:`ValueError` with a message that says what the model knows.
"""

from __future__ import annotations

from llnode.schema import Category, ModelInformation


def category_by_index(model_information: ModelInformation, index: int) -> Category:
    """The category a class index stands for; ValueError outside ``0 .. len(categories) - 1``."""
    categories = model_information.categories
    if not 0 <= index < len(categories):
        raise ValueError(f'category index {index} is out of range for a model with {len(categories)} categories')
    return categories[index]


def category_by_name(model_information: ModelInformation, name: str) -> Category:
    """The (first) category called ``name``; ValueError naming the categories the model has."""
    for category in model_information.categories:
        if category.name == name:
            return category
    known = ', '.join(repr(category.name) for category in model_information.categories) or 'none'
    raise ValueError(f'unknown category name {name!r}; the model knows: {known}')
