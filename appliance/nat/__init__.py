"""The NAT core: C fast path for established flows, Python slow path for new
ones. Sans-IO: see :class:`NatCore`."""

from ._core import DROP as DROP
from ._core import FORWARD as FORWARD
from ._core import MISS as MISS
from ._core import PASS as PASS
from ._core import Batch as Batch
from ._core import NatCore as NatCore
from ._core import Statistics as Statistics
from .._types import Backend as Backend
from .._types import Flow as Flow
from .._types import SessionInfo as SessionInfo
from .._types import Timeouts as Timeouts
from .._types import Translation as Translation
