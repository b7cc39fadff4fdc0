"""The secure-aggregation primitives (tiaki.secagg) against published vectors and their laws.

Known answers are the RFCs' (ChaCha20: 8439, X25519: 7748); derived values
(mask streams, agreed keys) are recomputed here from ``cryptography``'s own
primitives. Shamir sharing is checked on hand-made polynomials and by its two
laws; masks by the exact sum of 20 masked vectors and a chi-square test of
uniformity whose critical value is computed, and checked, below.
"""

from __future__ import annotations

import ast
import itertools
import math
import statistics
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from tiaki.errors import TiakiError
from tiaki.secagg import keys, masks, shamir
from tiaki.secagg.errors import SecureAggregationError

P = 2**255 - 19
I64 = np.iinfo(np.int64)
SECAGG = Path(__file__).resolve().parents[2] / "protos" / "tiaki" / "secagg"

# ---------------------------------------------------------------- ChaCha20 and the mask stream

# RFC 8439 section 2.4.2: key 00..1f, nonce 000000000000004a00000000, counter 1.
RFC8439_KEY = bytes(range(32))
RFC8439_NONCE = bytes.fromhex("000000000000004a00000000")
RFC8439_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip "
    b"for the future, sunscreen would be it."
)
RFC8439_CIPHERTEXT = bytes.fromhex(
    "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
    "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
    "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
    "5af90bbf74a35be6b40b8eedf2785e42874d"
)
# RFC 8439 appendix A.1, test vector 1: key, nonce and counter all zero (as mask_stream's).
RFC8439_A1_KEYSTREAM = bytes.fromhex(
    "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
    "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
)


def chacha20(key: bytes, counter: int, nonce: bytes, data: bytes) -> bytes:
    """RFC 8439 ChaCha20; ``cryptography`` wants the 4-byte little-endian counter then the nonce."""
    cipher = Cipher(algorithms.ChaCha20(key, counter.to_bytes(4, "little") + nonce), mode=None)
    encryptor = cipher.encryptor()
    return encryptor.update(data) + encryptor.finalize()


def words(raw: bytes) -> list[int]:
    return [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]


def test_chacha20_gives_the_rfc8439_vectors() -> None:
    assert len(RFC8439_PLAINTEXT) == len(RFC8439_CIPHERTEXT) == 114
    assert chacha20(RFC8439_KEY, 1, RFC8439_NONCE, RFC8439_PLAINTEXT) == RFC8439_CIPHERTEXT
    assert chacha20(bytes(32), 0, bytes(12), bytes(64)) == RFC8439_A1_KEYSTREAM


def test_the_mask_stream_is_the_keystream_of_the_hkdf_derived_key() -> None:
    seed = masks.seed_bytes(shamir.random_element())
    key = HKDF(hashes.SHA256(), length=32, salt=None, info=b"tiaki/secagg/v1/mask").derive(seed)
    expected = words(chacha20(key, 0, bytes(12), bytes(8 * 1001)))
    stream = masks.mask_stream(seed, 1001)
    assert stream.dtype == np.uint64 and stream.shape == (1001,)
    assert stream.tolist() == expected
    assert masks.mask_stream(seed, 5).tolist() == expected[:5]  # a shorter stream is a prefix
    assert masks.mask_stream(seed, 0).shape == (0,)
    # The seed (a Shamir secret) is never the cipher key itself.
    assert stream[:8].tolist() != words(chacha20(seed, 0, bytes(12), bytes(64)))


def test_seeds_are_32_byte_little_endian_field_elements() -> None:
    assert masks.seed_bytes(1) == b"\x01" + bytes(31)
    assert masks.seed_bytes(P - 1) == (P - 1).to_bytes(32, "little")
    for bad in (P, -1, True, 1.0):
        with pytest.raises(SecureAggregationError, match="seed"):
            masks.seed_bytes(bad)  # type: ignore[arg-type]
    for seed, length in ((bytes(31), 1), ("x" * 32, 1), (bytes(32), -1), (bytes(32), 1.5)):
        with pytest.raises(SecureAggregationError, match="mask"):
            masks.mask_stream(seed, length)  # type: ignore[arg-type]


# ---------------------------------------------------------------- X25519 and agreed keys

# RFC 7748 section 6.1.
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


def test_x25519_gives_the_rfc7748_vectors_and_agreed_key_is_its_hkdf() -> None:
    alice = X25519PrivateKey.from_private_bytes(ALICE_PRIVATE)
    bob = X25519PrivateKey.from_private_bytes(BOB_PRIVATE)
    assert keys.public_bytes(alice) == ALICE_PUBLIC and keys.public_bytes(bob) == BOB_PUBLIC
    assert keys.public_bytes(alice.public_key()) == ALICE_PUBLIC
    assert alice.exchange(keys.load_public(BOB_PUBLIC)) == SHARED
    assert bob.exchange(keys.load_public(ALICE_PUBLIC)) == SHARED
    info = b"tiaki/secagg/v1/mask/3/7"
    expected = HKDF(hashes.SHA256(), length=32, salt=b"session", info=info).derive(SHARED)
    assert keys.agreed_key(alice, BOB_PUBLIC, b"session", "mask", 3, 7) == expected
    assert keys.agreed_key(bob, ALICE_PUBLIC, b"session", "mask", 7, 3) == expected


def test_agreed_keys_are_symmetric_and_separate_sessions_purposes_and_pairs() -> None:
    u, v, w = keys.generate(), keys.generate(), keys.generate()
    pu, pv, pw = (keys.public_bytes(k) for k in (u, v, w))
    key = keys.agreed_key(u, pv, b"s1", "mask", 1, 2)
    assert key == keys.agreed_key(v, pu, b"s1", "mask", 2, 1) and len(key) == 32
    others = [
        keys.agreed_key(u, pv, b"s2", "mask", 1, 2),
        keys.agreed_key(u, pv, b"s1", "seal", 1, 2),
        keys.agreed_key(u, pv, b"s1", "mask", 1, 3),
        keys.agreed_key(u, pw, b"s1", "mask", 1, 2),
    ]
    assert len({key, *others}) == 5


def test_low_order_and_malformed_public_keys_are_refused() -> None:
    me = keys.generate()
    for low_order in (bytes(32), b"\x01" + bytes(31)):  # u = 0 (order 2) and u = 1 (order 4)
        with pytest.raises(SecureAggregationError, match="low order"):
            keys.agreed_key(me, low_order, b"s", "mask", 1, 2)
    for bad in (bytes(31), bytes(33), "00" * 32):
        with pytest.raises(SecureAggregationError, match="32 bytes"):
            keys.load_public(bad)  # type: ignore[arg-type]
    peer = keys.public_bytes(keys.generate())
    for session, purpose, a, b in ((b"", "mask", 1, 2), (b"s", "a/b", 1, 2), (b"s", "mask", 2, 2)):
        with pytest.raises(SecureAggregationError):
            keys.agreed_key(me, peer, session, purpose, a, b)
    with pytest.raises(SecureAggregationError, match="node index"):
        keys.agreed_key(me, peer, b"s", "mask", 0, 2)


def test_private_keys_are_field_elements_so_they_can_be_shamir_shared() -> None:
    key = keys.generate()
    element = keys.private_element(key)
    assert 0 <= element < P
    shares = shamir.split(element, 3, [1, 2, 3, 4, 5])
    rebuilt = keys.from_element(shamir.reconstruct({x: shares[x] for x in (2, 4, 5)}, 3))
    assert keys.public_bytes(rebuilt) == keys.public_bytes(key)
    # Bob's RFC key has its top bit set: not a field element, so refused, not reduced.
    with pytest.raises(SecureAggregationError, match="not a field element"):
        keys.private_element(X25519PrivateKey.from_private_bytes(BOB_PRIVATE))


# ---------------------------------------------------------------- sealing


def test_sealing_round_trips_and_refuses_any_change() -> None:
    key = keys.agreed_key(keys.generate(), keys.public_bytes(keys.generate()), b"s", "seal", 1, 2)
    aad = keys.message_aad(b"s", 1, 2, "share-keys")
    sealed = keys.seal(key, b"shares of node 1 for node 2", aad)
    assert keys.open_sealed(key, sealed, aad) == b"shares of node 1 for node 2"
    assert keys.seal(key, b"shares of node 1 for node 2", aad) != sealed  # a fresh nonce
    assert keys.open_sealed(key, keys.seal(key, b"", aad), aad) == b""
    for bit in (0, 12 * 8 + 3, len(sealed) * 8 - 1):  # in the nonce, the ciphertext, the tag
        flipped = bytearray(sealed)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(SecureAggregationError, match="authentication"):
            keys.open_sealed(key, bytes(flipped), aad)
    # Turned back to its sender, moved to another session, to another round:
    for wrong in ((b"s", 2, 1, "share-keys"), (b"t", 1, 2, "share-keys"), (b"s", 1, 2, "unmask")):
        with pytest.raises(SecureAggregationError, match="authentication"):
            keys.open_sealed(key, sealed, keys.message_aad(*wrong))
    with pytest.raises(SecureAggregationError, match="authentication"):
        keys.open_sealed(bytes(32), sealed, aad)
    with pytest.raises(SecureAggregationError, match="shorter"):
        keys.open_sealed(key, sealed[:27], aad)
    with pytest.raises(SecureAggregationError, match="32 bytes"):
        keys.seal(key[:16], b"x", aad)


def test_message_aad_is_length_prefixed_fields() -> None:
    aad = keys.message_aad(b"sess|ion", 12, 3, "share-keys")
    fields, rest = [], aad
    while rest:
        size = int.from_bytes(rest[:4], "big")
        assert len(rest) >= 4 + size
        fields.append(rest[4 : 4 + size])
        rest = rest[4 + size :]
    twelve, three = (12).to_bytes(32, "big"), (3).to_bytes(32, "big")
    assert fields[1:] == [b"sess|ion", twelve, three, b"share-keys"]
    # Where plain concatenation would collide ("1" "23" and "12" "3"), these do not.
    assert keys.message_aad(b"s", 1, 23, "r") != keys.message_aad(b"s", 12, 3, "r")
    for bad in ((b"", 1, 2, "r"), (b"s", 1, 1, "r"), (b"s", 0, 1, "r"), (b"s", 1, 2, "")):
        with pytest.raises(SecureAggregationError):
            keys.message_aad(*bad)


# ---------------------------------------------------------------- Shamir


def interpolate(points: dict[int, int], at: int) -> int:
    """The test's own Lagrange interpolation mod P, independent of the code under test."""
    total = 0
    for xi, yi in points.items():
        num = den = 1
        for xj in points:
            if xj != xi:
                num, den = num * (at - xj) % P, den * (xi - xj) % P
        total += yi * num * pow(den, -1, P)
    return total % P


def test_reconstruct_and_lagrange_on_hand_made_polynomials() -> None:
    assert shamir.reconstruct({1: 15, 2: 33, 3: 61}, 3) == 7  # f(x) = 7 + 3x + 5x²
    assert shamir.reconstruct({1: 0, 2: 1}, 2) == P - 1  # f(x) = (P - 1) + x
    assert shamir.lagrange_at_zero([1, 2, 3]) == {1: 3, 2: P - 3, 3: 1}
    coefficients = shamir.lagrange_at_zero([5, 9, 1000, P - 1])
    assert sum(coefficients.values()) % P == 1  # they interpolate the constant 1


def test_every_threshold_subset_rebuilds_the_secret() -> None:
    secret, holders = shamir.random_element(), [1, 2, 3, 4, 5, 6]
    for threshold in range(1, len(holders) + 1):
        shares = shamir.split(secret, threshold, holders)
        assert sorted(shares) == holders and all(0 <= y < P for y in shares.values())
        for subset in itertools.combinations(holders, threshold):
            assert shamir.reconstruct({x: shares[x] for x in subset}, threshold) == secret
    fresh = shamir.split(secret, 3, holders)
    assert fresh != shamir.split(secret, 3, holders)  # new coefficients each time


@settings(max_examples=60, deadline=None)
@given(st.integers(0, P - 1), st.data())
def test_any_threshold_or_more_random_shares_rebuild_the_secret(
    secret: int, data: st.DataObject
) -> None:
    holders = data.draw(st.lists(st.integers(1, P - 1), min_size=1, max_size=9, unique=True))
    threshold = data.draw(st.integers(1, len(holders)))
    shares = shamir.split(secret, threshold, holders)
    chosen = data.draw(st.lists(st.sampled_from(holders), min_size=threshold, unique=True))
    assert shamir.reconstruct({x: shares[x] for x in chosen}, threshold) == secret


def test_extra_shares_are_chosen_by_smallest_index() -> None:
    secret = shamir.random_element()
    shares = shamir.split(secret, 2, [1, 2, 3])
    assert shamir.reconstruct({3: (shares[3] + 1) % P, 2: shares[2], 1: shares[1]}, 2) == secret
    assert shamir.reconstruct({1: (shares[1] + 1) % P, 2: shares[2], 3: shares[3]}, 2) != secret


def test_fewer_than_threshold_shares_fit_every_secret() -> None:
    """With t - 1 shares, every candidate secret has a polynomial of degree t - 1 through them
    (exactly one, so with uniform coefficients all candidates are equally likely): a t-th
    share forged from that polynomial makes reconstruct return the candidate."""
    secret = shamir.random_element()
    shares = shamir.split(secret, 4, [1, 2, 3, 4, 5, 6])
    seen = {x: shares[x] for x in (2, 3, 5)}
    with pytest.raises(SecureAggregationError, match="3 shares cannot rebuild"):
        shamir.reconstruct(seen, 4)
    for candidate in (0, 1, secret, P - 1, shamir.random_element()):
        forged = interpolate({0: candidate, **seen}, 6)
        assert shamir.reconstruct({**seen, 6: forged}, 4) == candidate


SHAMIR_ERRORS: list[tuple[Callable[[], object], str]] = [
    (lambda: shamir.split(P, 2, [1, 2]), "secret must be an integer in"),
    (lambda: shamir.split(-1, 2, [1, 2]), "secret must be an integer in"),
    (lambda: shamir.split(1, 0, [1, 2]), "threshold must be an integer of at least 1"),
    (lambda: shamir.split(1, 3, [1, 2]), "exceeds the number of holders"),
    (lambda: shamir.split(1, 2, [1, 2, 1]), "distinct; 1 appears twice"),
    (lambda: shamir.split(1, 1, [0, 1]), "holders must be integers in 1"),
    (lambda: shamir.split(1, 1, [P]), "holders must be integers in 1"),
    (lambda: shamir.split(1, 1, [True]), "holders must be integers in 1"),
    (lambda: shamir.split(1, 1, []), "holders must not be empty"),
    (lambda: shamir.reconstruct({1: P}, 1), "share at 1 must be an integer in"),
    (lambda: shamir.reconstruct({0: 5}, 1), "share points must be integers in 1"),
    (lambda: shamir.reconstruct({1: 1}, 2), "1 shares cannot rebuild"),
    (lambda: shamir.reconstruct({}, 1), "0 shares cannot rebuild"),
    (lambda: shamir.reconstruct({1: 1}, 0), "threshold must be an integer of at least 1"),
    (lambda: shamir.lagrange_at_zero([3, 3]), "distinct"),
    (lambda: shamir.lagrange_at_zero([]), "must not be empty"),
]


@pytest.mark.parametrize(("call", "match"), SHAMIR_ERRORS, ids=[m for _, m in SHAMIR_ERRORS])
def test_shamir_validation(call: Callable[[], object], match: str) -> None:
    with pytest.raises(SecureAggregationError, match=match) as caught:
        call()
    assert isinstance(caught.value, TiakiError)


# ---------------------------------------------------------------- masks


def test_twenty_masked_vectors_sum_to_the_exact_sum() -> None:
    nodes, length, session = list(range(1, 21)), 301, b"sum-test"
    rng = np.random.default_rng(20170)
    x = rng.integers(-(2**40), 2**40, size=(len(nodes), length), dtype=np.int64)
    x[:, :4] = 0  # columns whose partial sums wrap, with totals that fit in an int64
    x[:2, 0], x[2:4, 0] = I64.max, I64.min  # total -2
    x[:10, 1], x[10:, 1] = I64.max, I64.min + 1  # total 0
    x[0, 2], x[0, 3] = I64.min, I64.max  # totals at the limits
    expected = [sum(int(v) for v in x[:, j]) for j in range(length)]
    assert expected[:4] == [-2, 0, I64.min, I64.max]
    assert all(I64.min <= e <= I64.max for e in expected)

    private = {u: keys.generate() for u in nodes}
    public = {u: keys.public_bytes(private[u]) for u in nodes}
    self_seeds = {u: masks.seed_bytes(shamir.random_element()) for u in nodes}
    total = np.zeros(length, dtype=np.uint64)
    for i, u in enumerate(nodes):
        y = masks.add(masks.to_ring(x[i]), masks.mask_stream(self_seeds[u], length))
        for v in (v for v in nodes if v != u):
            seed = keys.agreed_key(private[u], public[v], session, "mask", u, v)
            step = masks.add if masks.pairwise_sign(u, v) > 0 else masks.subtract
            y = step(y, masks.mask_stream(seed, length))
        assert np.mean(y == masks.to_ring(x[i])) < 0.01  # a masked vector hides its input
        total = masks.add(total, y)
    for u in nodes:
        total = masks.subtract(total, masks.mask_stream(self_seeds[u], length))
    assert masks.from_ring(total).tolist() == expected


def test_the_ring_encoding_is_twos_complement() -> None:
    signed = np.array([I64.min, -1, 0, 1, I64.max], dtype=np.int64)
    ring = masks.to_ring(signed)
    assert ring.dtype == np.uint64 and ring.tolist() == [2**63, 2**64 - 1, 0, 1, 2**63 - 1]
    back = masks.from_ring(ring)
    assert back.dtype == np.int64 and back.tolist() == signed.tolist()
    with pytest.raises(SecureAggregationError, match="int64"):
        masks.to_ring(np.array([1.0]))
    with pytest.raises(SecureAggregationError, match="uint64"):
        masks.from_ring(np.array([1], dtype=np.int64))


def test_ring_arithmetic_wraps_without_warnings_or_floats_and_signs_cancel() -> None:
    a = np.array([2**64 - 1, 2**63, 5], dtype=np.uint64)
    b = np.array([1, 2**63, 7], dtype=np.uint64)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        total, difference = masks.add(a, b), masks.subtract(b, a)
    assert total.dtype == difference.dtype == np.uint64
    assert total.tolist() == [0, 0, 12] and difference.tolist() == [2, 0, 2]
    for bad in (np.array([1, 2, 3], dtype=np.int64), np.array([1.0, 2, 3]), [1, 2, 3], a[0]):
        with pytest.raises(SecureAggregationError, match="1-d numpy uint64"):
            masks.add(a, bad)  # type: ignore[arg-type]
    with pytest.raises(SecureAggregationError, match="shapes"):
        masks.subtract(a, b[:2])
    assert (masks.pairwise_sign(1, 2), masks.pairwise_sign(2, 1)) == (1, -1)
    assert masks.pairwise_sign(5, 40) + masks.pairwise_sign(40, 5) == 0
    with pytest.raises(SecureAggregationError, match="itself"):
        masks.pairwise_sign(3, 3)


def chi_square_critical(df: int, tail: float) -> float:
    """Upper ``tail`` quantile of χ²(df), by Wilson and Hilferty (1931): χ²/df is about
    normal after a cube root, so the quantile is df·(1 − c + z·√c)³ with c = 2/(9·df)
    and z the normal quantile."""
    z = statistics.NormalDist().inv_cdf(1 - tail)
    c = 2 / (9 * df)
    return df * (1 - c + z * math.sqrt(c)) ** 3


def chi_square_tail_even(x: float, df: int) -> float:
    """Exact P(χ²(df) > x) for even df: e^(−x/2)·Σ_{k<df/2} (x/2)^k / k! (a Poisson sum)."""
    half, term, total = x / 2, 1.0, 0.0
    for k in range(df // 2):
        total += term
        term *= half / (k + 1)
    return math.exp(-half) * total


TAIL = 1e-6  # a correct stream fails each chi-square check with probability 1e-6
CRITICAL = chi_square_critical(255, TAIL)  # about 377.2 for 256 bins


def test_the_critical_value_is_right() -> None:
    """Checks the checker: at df = 256 the exact tail of the approximate quantile is 1e-6 to
    within 10%; and the NIST/SEMATECH e-Handbook table gives χ²(100) upper 0.001 as 149.449."""
    assert abs(chi_square_tail_even(chi_square_critical(256, TAIL), 256) / TAIL - 1) < 0.1
    assert abs(chi_square_critical(100, 1e-3) - 149.449) < 0.2
    assert 370 < CRITICAL < 385


def chi_square(values: npt.NDArray[np.uint64]) -> float:
    counts = np.bincount(values.astype(np.int64), minlength=256)
    assert counts.shape == (256,)
    expected = values.size / 256
    return float(np.sum((counts - expected) ** 2) / expected)


def test_a_masked_vector_is_uniform_in_its_low_and_top_bytes() -> None:
    length = 100_000
    x = masks.to_ring((np.arange(length, dtype=np.int64) % 7) - 3)  # far from uniform
    masked = masks.add(x, masks.mask_stream(masks.seed_bytes(shamir.random_element()), length))
    low, top = np.uint64(0xFF), np.uint64(56)
    assert chi_square(masked & low) < CRITICAL
    assert chi_square(masked >> top) < CRITICAL
    # The test has power: the same bytes unmasked fail it.
    assert chi_square(x & low) > CRITICAL and chi_square(x >> top) > CRITICAL


# ---------------------------------------------------------------- no home-made randomness


def random_imports(tree: ast.Module) -> list[str]:
    """Every import, anywhere in the module, of ``random`` or of ``numpy.random``."""
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        line = getattr(node, "lineno", 0)
        found += [f"{line}: {n}" for n in names if f"{n}.".startswith(("random.", "numpy.random."))]
    return found


def test_the_secagg_scan_can_fail() -> None:
    sample = (
        "import random\nfrom numpy import random as r\n"
        "def f():\n    import numpy.random\n    from numpy.random import default_rng\n"
    )
    found = random_imports(ast.parse(sample))  # line 5 imports numpy.random and a name in it
    assert len(found) == 5 and {f.split(":")[0] for f in found} == {"1", "2", "4", "5"}
    assert (
        random_imports(ast.parse("import secrets\nimport numpy as np\nimport randomness\n")) == []
    )


def test_no_secagg_module_imports_random_or_numpy_random() -> None:
    paths = sorted(SECAGG.rglob("*.py"))
    names = {p.name for p in paths}
    assert {"__init__.py", "errors.py", "shamir.py", "masks.py", "keys.py"} <= names
    found = [
        f"{p.name}:{use}"
        for p in paths
        for use in random_imports(ast.parse(p.read_text(encoding="utf-8")))
    ]
    assert found == []
