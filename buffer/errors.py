"""The buffer's error that callers catch (re-exported by buffer/api.py; here so that every buffer module can raise it
without importing the contract module)."""


class BufferUnavailable(RuntimeError):
    """Redis could not be reached or did not answer; the message names the URL, the operation and the fix."""
