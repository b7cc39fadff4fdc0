"""``tiaki``: the analyst's command line. One module per command."""
