"""The one base class of every error cvae-pms reports to a user.

Each module raises its own subclass (``GridError``, ``InferError``, ``RunDirError`` ...), with
a message that names the file, column or option at fault. The command line catches
:class:`CvaePmsError` once (``cvae_pms.cli``) and prints it as a single ``Error: ...`` line
with exit status 1; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class CvaePmsError(Exception):
    """A problem with the user's input, files or options (the message says which)."""
