"""cppuvicorn: a drop-in replacement for Uvicorn with a native C++ HTTP core."""

__version__ = "0.1.0"

from cppuvicorn.config import Config  # noqa: E402
from cppuvicorn.main import main, run  # noqa: E402
from cppuvicorn.server import Server  # noqa: E402

__all__ = ["Config", "Server", "__version__", "main", "run"]
