"""A package in src/ layout: its modules import each other with relative imports."""
