"""The Redis protocol (RESP2/RESP3) front end of a node: `RespServer` over a KeyValueService."""

from limedb.resp.server import Limits, RespServer

__all__ = ["Limits", "RespServer"]
