"""Exceptions the engine raises whose message is meant for the user."""


class EngineError(Exception):
    """A job cannot be done as asked (e.g. out of memory, image too small).

    The message is safe to show to a client and says what to try instead.
    """
