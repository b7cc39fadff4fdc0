"""The tiaki contract: the only code both a node and a coordinator import.

It holds the value types of a query and of a privacy budget, the typed errors
and the gRPC status code each one travels as, and the conversion to and from
the generated protobuf messages in ``tiaki.v1``.
"""

__version__ = "0.1.0"
