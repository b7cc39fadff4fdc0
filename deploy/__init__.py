"""The deployment scripts: each runs as ``python deploy/NAME.py``; the tests import them."""
