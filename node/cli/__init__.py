"""``tiaki-node``: the NGO's command line. One module per command."""
