from typing import Any

from imgate.cache.base import Session

def sweep_user(self: Any, mid: int) -> list[Session]: ...
