"""``tiaki-hub``: the relay for nodes that dial out (see ``tiaki/v1/hub.proto``)."""
