"""Several appliances as one (issue 16, docs/cluster.md): the vips
announced over BGP by a BIRD 2 daemon the appliance runs as its child,
withdrawn when it stops, drains or loses a data interface."""

from ._bird import Bird, BirdError
from ._config import BgpConfig, ClusterConfig, Neighbor, parse_bgp, parse_cluster

__all__ = ["Bird", "BirdError", "BgpConfig", "ClusterConfig", "Neighbor", "parse_bgp", "parse_cluster"]
