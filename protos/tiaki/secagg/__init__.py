"""Secure aggregation primitives: the coordinator learns only the sum of the nodes' vectors.

After Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving
Machine Learning" (CCS 2017), in the variant secure against an active server.
Each node adds to its integer vector a self-mask and, for every other node, a
pairwise mask that the other node subtracts; summed, the pairwise masks
cancel, and the coordinator removes the self-masks of the nodes that stayed
from the seeds their peers help it rebuild. A node's vector alone looks
uniformly random.

- :mod:`~tiaki.secagg.shamir`: t-out-of-n Shamir sharing over GF(2**255 - 19),
  for the self-mask seeds and the mask-agreement private keys.
- :mod:`~tiaki.secagg.masks`: vectors over Z_(2^64), the ChaCha20 mask
  stream a seed expands to, and the sign of a pairwise mask.
- :mod:`~tiaki.secagg.keys`: X25519 key agreement and the ChaCha20-Poly1305
  sealing of node-to-node messages the coordinator relays.
- :mod:`~tiaki.secagg.errors`: the one error type they raise.

The protocol itself (its rounds, who sends what, the recovery from dropouts)
is not here: these are only its building blocks.
"""
