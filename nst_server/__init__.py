"""Neural style transfer server: a VGG19 Gatys engine behind a local Flask/waitress API.

Import layers one way: ``engine`` (TensorFlow/numpy, no HTTP) <- ``jobs`` <- ``api`` <- ``cli``.
Importing this package imports neither TensorFlow nor Flask.
"""

__version__ = "0.1.0"
