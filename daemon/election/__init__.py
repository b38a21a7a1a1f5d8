"""Leader election backends: one interface, one module per backend.

A backend only answers "who holds the leader lease, with which term"; the
role state machine (daemon/roles.py) decides what to do about it. Terms are
fencing tokens: strictly increasing with each acquisition, used as the epoch
that every replicated operation carries.
"""
