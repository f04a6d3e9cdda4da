"""A local Gemini API emulator the unmodified google-genai SDK talks to by base URL.

`Emulator` serves it on the running event loop; `main` is the command line;
`sandbox.emulator.testing.launch_emulator` runs it as a subprocess.
"""

from .cli import main
from .faults import Faults
from .server import Emulator

__all__ = ["Emulator", "Faults", "main"]
