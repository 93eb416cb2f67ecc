"""The Ray runtime's parts: placement, the replica actor, replica refs and membership.

Nothing here imports ``ray`` at module top level except the modules only the Ray runtime
loads (``replica_actor``, ``refs``, ``membership``); ``placement`` is pure.
"""
