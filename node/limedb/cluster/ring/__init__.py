"""The token ring and the ring record, one module for each thing they hold (docs/architecture.md).

placement: the immutable token ring (which nodes own which keys); record: the ring record
(committed ring, RF and the latest transition) and the routing it implies; store: the record
on disk; keeper: this node's newest copy; exchange: copying it between nodes.
"""
