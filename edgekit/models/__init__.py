"""Built-in models. ``edgekit.models.registry`` lists them without importing torch."""
