"""cnat-appliance: a container-networking NAT modelled on VPP's cnat.

The public surface is re-exported here; everything else is private.
"""

from .__about__ import __version__ as __version__
from ._config import Config as Config
from ._config import ConfigError as ConfigError
from ._config import load_config as load_config
from ._config import parse_config as parse_config
