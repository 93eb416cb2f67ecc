"""The Ray runtime's parts: placement, the replica actor, replica refs, membership, the
detached controller actor, the node proxy actors, in-proxy replicas, and the client the
driver and every proxy use (``driver_control``).

Nothing here imports ``ray`` at module top level except the modules only the Ray runtime
loads (``replica_actor``, ``refs``, ``membership``); ``placement`` is pure.
"""
