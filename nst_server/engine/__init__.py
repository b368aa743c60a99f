"""The style engine: VGG19 features, Gatys losses, L-BFGS/Adam. No HTTP in here.

Importing this package does not import TensorFlow; ``StyleEngine`` does when first used, with
TensorFlow's C++ start-up notices filtered (``device.import_tensorflow``).
"""

from nst_server.engine.errors import EngineError
from nst_server.engine.progress import PHASES, Cancelled, FinishEarly, Progress, ProgressCallback

#: Version of the engine's look: bumped whenever new defaults or methods change the picture the
#: same settings give. Result records carry it (README's changelog says what changed).
ENGINE_VERSION = 2

__all__ = [
    "ENGINE_VERSION",
    "PHASES",
    "Cancelled",
    "EngineError",
    "FinishEarly",
    "Progress",
    "ProgressCallback",
    "StyleEngine",
]


def __getattr__(name: str):
    # Lazy so that `import nst_server.engine` stays cheap for the API layer and the CLI's --help.
    if name == "StyleEngine":
        from nst_server.engine.core import StyleEngine

        return StyleEngine
    raise AttributeError(name)
