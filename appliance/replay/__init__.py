"""Offline replay of captures through the NAT core."""

from ._pcap import CaptureError as CaptureError
from ._pcap import CaptureReader as CaptureReader
from ._pcap import PcapWriter as PcapWriter
from ._pcap import write_pcapng as write_pcapng
from ._replay import ReplayReport as ReplayReport
from ._replay import replay as replay
