"""One module per measure: its published definition (numpy in, numbers out) and, at the bottom, its
registration (``services.metrics.registry.register_measure``: name, inputs, options with their defaults, and
the ``compute`` that turns the loaded sets into Score entries). ``knn.py`` holds the k-NN helpers ipr and prdc
share.

Importing this package imports no measure; the registry imports the built-in ones, in this order (the order
they are computed and listed in), on first use.
"""

BUILTIN: tuple[str, ...] = ("fid", "kid", "ipr", "prdc", "spatial", "svm", "variety")
