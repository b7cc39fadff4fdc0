"""gRPC metadata keys that are part of the wire contract."""

# In --insecure development mode, where no certificate identifies the caller,
# the coordinator names itself under this key. With mutual TLS the node
# ignores it: the verified certificate is the identity.
IDENTITY_METADATA_KEY = "tiaki-coordinator"
