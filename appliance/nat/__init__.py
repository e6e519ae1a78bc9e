"""The NAT core: C fast path for established flows, Python slow path for new
ones. Sans-IO: see :class:`NatCore`."""

from .._backends import BackendSet as BackendSet
from .._types import Backend as Backend
from .._types import Flow as Flow
from .._types import SessionInfo as SessionInfo
from .._types import Timeouts as Timeouts
from .._types import Translation as Translation
from ._batch import Batch as Batch
from ._common import Verdict as Verdict
from ._core import NatCore as NatCore
from ._lane import Lane as Lane
from ._statistics import Statistics as Statistics
