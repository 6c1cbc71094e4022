from typing import Any

from imgate.protocol._job import PushJob

def route_nowait(self: Any, job: PushJob) -> int: ...
