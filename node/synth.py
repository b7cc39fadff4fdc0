"""Synthetic client records for a New Zealand social-service NGO (fake people only).

The records match ``node/templates/node.yaml`` column for column, so
``tiaki-node synth``, ``import`` and ``serve`` work together out of the box.
What the data models:

- **Clients** (the privacy unit) each have 1 to 12 service episodes: most have
  1-3, a "frequent" minority has many, so per-client bounding to ``k`` matters.
  Name, address, age band, gender, ethnicity and region are fixed per client;
  service and referral source vary per episode (usually the client's main
  service). Ethnicity is conditioned on region (Pacific peoples concentrated in
  Auckland, Māori over-represented overall and in Northland, Gisborne and the
  Bay of Plenty); age and gender are conditioned on the main service.
- **Episodes** start between 2019-01-01 and the extract date 2026-10-31, spaced
  out within each client. Durations are log-normal by service (weeks for
  budgeting, months for youth work); sessions follow duration. Episodes that
  would end after the extract date, and some recent ones, are open (~10%):
  no end date and no post scores.
- **Outcomes**: pre scores (1-5) skew low and are correlated within a client;
  post scores improve by service-specific effects (budgeting and housing lift
  circumstances, counselling lifts goals, family violence shows smaller and
  noisier gains), scaled by engagement (sessions) and by the NGO's own
  effectiveness, clamped to 1..5.
- **The NGO** is picked by the seed (:func:`profile_for`): a main service
  holding 25-80% of clients, a home region holding 45-90% of clients (or a
  national spread), a share of frequent clients, an effectiveness factor and
  the client-id prefix. So ``--seed 1`` and ``--seed 2`` give nodes with
  different sizes of effect and different mixes, as a real federation has.

Same (clients, seed) gives a byte-identical CSV. Columns are generated with
numpy in blocks of BLOCK clients (each block its own random stream, so memory
stays flat) and turned into text a block at a time.
"""

from __future__ import annotations

import csv
import math
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import date, timedelta
from typing import Any

import numpy as np  # synthetic data only: numpy.random is not a privacy mechanism here
import numpy.typing as npt

COLUMNS: tuple[str, ...] = (
    "client_id", "client_name", "address", "age_band", "gender", "ethnicity", "region",
    "service", "referral_source", "episode_start", "episode_end", "sessions",
    "circumstances_pre", "circumstances_post", "goals_pre", "goals_post",
)  # fmt: skip
MAX_CLIENTS = 5_000_000
MAX_EPISODES = 12
BLOCK = 100_000  # clients per random stream; changing it changes every output

AGE_BANDS = ("0-17", "18-24", "25-34", "35-44", "45-54", "55-64", "65+")
GENDERS = ("female", "male", "another_gender")
ETHNICITIES = ("maori", "pacific", "asian", "melaa", "european_other")
REGIONS = (
    "northland", "auckland", "waikato", "bay_of_plenty", "gisborne", "hawkes_bay",
    "taranaki", "manawatu_whanganui", "wellington", "tasman", "nelson", "marlborough",
    "west_coast", "canterbury", "otago", "southland",
)  # fmt: skip
SERVICES = ("budgeting", "counselling", "family_violence", "youth", "housing")
REFERRALS = ("self", "whanau", "health", "msd", "police", "school", "community")

FIRST_DAY = date(2019, 1, 1)
EXTRACT_DAY = date(2026, 10, 31)  # the export date: nothing starts or ends after it
_N_DAYS = (EXTRACT_DAY - FIRST_DAY).days + 1
_LAST = _N_DAYS - 1

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# Approximate 2023 census populations (thousands), in REGIONS order.
_POPULATION = np.array(
    [204, 1656, 499, 345, 51, 175, 126, 255, 542, 58, 53, 50, 33, 665, 247, 101], dtype=float
)
# Ethnicity weight multipliers by region (base mix ~35/15/8/2/40, in ETHNICITIES order).
_ETH_BASE = np.array([0.35, 0.15, 0.08, 0.02, 0.40])
_ETH_REGION = {
    "northland": (1.6, 0.4, 0.3, 0.5, 1.0), "auckland": (0.75, 2.1, 1.9, 1.5, 0.8),
    "waikato": (1.3, 0.6, 0.8, 0.8, 1.0), "bay_of_plenty": (1.5, 0.5, 0.6, 0.6, 1.0),
    "gisborne": (1.9, 0.4, 0.2, 0.3, 0.7), "hawkes_bay": (1.4, 0.8, 0.4, 0.5, 1.0),
    "wellington": (0.9, 1.3, 1.1, 1.3, 1.0), "canterbury": (0.65, 0.5, 0.9, 1.0, 1.3),
    "otago": (0.6, 0.4, 0.8, 0.9, 1.4), "nelson": (0.7, 0.4, 0.7, 0.8, 1.4),
    "tasman": (0.7, 0.3, 0.5, 0.6, 1.5), "marlborough": (0.8, 0.6, 0.5, 0.6, 1.3),
    "west_coast": (0.8, 0.2, 0.3, 0.4, 1.5),
}  # fmt: skip  # regions not listed use 1.0 for every group

# Per service, in SERVICES order: age band mix, gender mix, log-normal duration
# (median days, sigma), sessions per week, pre-score shifts (circumstances, goals),
# improvement (mean, sd) for circumstances and for goals, referral mix.
_AGE = np.array([
    [0.00, 0.10, 0.25, 0.24, 0.19, 0.13, 0.09],
    [0.08, 0.14, 0.22, 0.20, 0.17, 0.12, 0.07],
    [0.05, 0.13, 0.30, 0.27, 0.15, 0.07, 0.03],
    [0.72, 0.28, 0.00, 0.00, 0.00, 0.00, 0.00],
    [0.00, 0.16, 0.25, 0.21, 0.17, 0.12, 0.09],
])  # fmt: skip
_GENDER = np.array([[0.60, 0.38, 0.02], [0.62, 0.35, 0.03], [0.78, 0.20, 0.02],
                    [0.48, 0.48, 0.04], [0.55, 0.43, 0.02]])  # fmt: skip
_DURATION = np.array([[56, 0.5], [100, 0.55], [90, 0.65], [150, 0.55], [75, 0.7]])
_RATE = np.array([0.7, 0.8, 0.9, 0.6, 0.5])
_PRE_SHIFT = np.array([[-0.3, 0.0], [0.0, -0.2], [-0.4, -0.3], [0.0, 0.0], [-0.6, -0.1]])
_EFFECT_CIRC = np.array([[1.15, 0.8], [0.4, 0.8], [0.5, 1.3], [0.6, 0.9], [1.5, 1.0]])
_EFFECT_GOALS = np.array([[0.7, 0.8], [1.15, 0.9], [0.6, 1.3], [0.75, 0.9], [0.6, 0.9]])
_REFERRAL = np.array([
    [0.25, 0.10, 0.05, 0.35, 0.02, 0.03, 0.20],
    [0.25, 0.10, 0.35, 0.10, 0.05, 0.05, 0.10],
    [0.15, 0.10, 0.15, 0.05, 0.40, 0.05, 0.10],
    [0.05, 0.20, 0.10, 0.05, 0.10, 0.40, 0.10],
    [0.15, 0.10, 0.10, 0.40, 0.03, 0.02, 0.20],
])  # fmt: skip
# Pre scores: a standard normal cut here gives 23/37/20/11/4 % for 1..5 (before
# the service shifts above, which push most services lower still).
_CUTS = np.array([-0.75, 0.25, 1.0, 1.7])

# Name pools in ETHNICITIES order: (female, male, surnames). Invented combinations.
_NAMES: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    (("Aroha", "Mere", "Hine", "Ngaire", "Kiri", "Anahera", "Huia", "Tūī", "Moana", "Roimata"),
     ("Wiremu", "Hemi", "Tama", "Rawiri", "Nikau", "Manaia", "Tamati", "Ihaia", "Hōhepa", "Kahu"),
     ("Ngata", "Tipene", "Parata", "Wihongi", "Horomona", "Te Rangi", "Mōkena", "Rāwiri",
      "Tamihana", "Whaanga", "Paewai", "Hēnare")),
    (("Losa", "Malia", "Mele", "Sina", "Talia", "Ana", "Lupe", "Fetu", "Sefa", "Vailea"),
     ("Sione", "Tevita", "Sefo", "Iosefa", "Viliami", "Leota", "Pita", "Ioane", "Manu", "Tavita"),
     ("Faleolo", "Tuilagi", "Fonoti", "Taufa", "Vaifale", "Latu", "Leaupepe", "Mataio",
      "Tuipulotu", "Afamasaga")),
    (("Mei", "Priya", "Ananya", "Yuki", "Ji-woo", "Lin", "Anjali", "Hana", "Xin", "Divya"),
     ("Wei", "Arjun", "Raj", "Hiroshi", "Min-jun", "Jun", "Vikram", "Tao", "Rohan", "Kenji"),
     ("Chen", "Patel", "Singh", "Wang", "Kim", "Sharma", "Li", "Nguyen", "Tanaka", "Kumar")),
    (("Layla", "Fatima", "Yasmin", "Mariam", "Noor", "Sara", "Leila", "Amira", "Rana", "Dina"),
     ("Omar", "Amir", "Hassan", "Karim", "Yusuf", "Tariq", "Sami", "Ali", "Nabil", "Rami"),
     ("Haddad", "Hussein", "Ahmadi", "Nasser", "Khalil", "Mansour", "Saleh", "Darwish")),
    (("Emma", "Olivia", "Charlotte", "Ruby", "Sophie", "Grace", "Chloe", "Hannah", "Kate", "Jess"),
     ("Jack", "James", "Liam", "Oliver", "Ben", "Sam", "Daniel", "Thomas", "Josh", "Ryan"),
     ("Smith", "Wilson", "Williams", "Brown", "Taylor", "Jones", "Thompson", "Walker",
      "Anderson", "Campbell", "Stewart", "Robertson", "Harris", "Clarke", "Murray", "Scott")),
)  # fmt: skip
_NEUTRAL = ("Alex", "Jordan", "Kai", "Rangi", "Sam", "Charlie", "Ari", "Quinn", "Taylor", "Rēwi")
_TOWNS = {
    "northland": ("Whangārei", "Kaitaia", "Kerikeri", "Dargaville", "Kaikohe"),
    "auckland": ("Manukau", "Ōtāhuhu", "Henderson", "Papakura", "Takapuna", "Māngere"),
    "waikato": ("Hamilton", "Huntly", "Tokoroa", "Te Awamutu", "Thames"),
    "bay_of_plenty": ("Tauranga", "Rotorua", "Whakatāne", "Ōpōtiki"),
    "gisborne": ("Gisborne", "Ruatōria"), "hawkes_bay": ("Napier", "Hastings", "Wairoa"),
    "taranaki": ("New Plymouth", "Hāwera", "Stratford"),
    "manawatu_whanganui": ("Palmerston North", "Whanganui", "Levin", "Feilding"),
    "wellington": ("Porirua", "Lower Hutt", "Upper Hutt", "Wellington", "Masterton"),
    "tasman": ("Richmond", "Motueka", "Tākaka"), "nelson": ("Nelson", "Stoke"),
    "marlborough": ("Blenheim", "Picton"), "west_coast": ("Greymouth", "Westport", "Hokitika"),
    "canterbury": ("Christchurch", "Rangiora", "Ashburton", "Timaru", "Rolleston"),
    "otago": ("Dunedin", "Ōamaru", "Queenstown", "Alexandra"),
    "southland": ("Invercargill", "Gore", "Winton"),
}  # fmt: skip
_STREETS = (
    "Kauri", "Rimu", "Tōtara", "Pōhutukawa", "Kōwhai", "Harakeke", "Mataī", "Miro", "Nīkau",
    "Kererū", "Huia", "Moana", "Ngaio", "Beach", "Hill", "Church", "Station", "Queen", "King",
    "Victoria", "Albert", "Park", "Mill", "Bridge", "Gordon", "Seaview", "Rata", "Tui",
)  # fmt: skip
_SUFFIXES = ("Street", "Road", "Avenue", "Crescent", "Place", "Drive", "Terrace", "Lane", "Grove")
_SUFFIX_P = np.array([0.35, 0.30, 0.08, 0.08, 0.07, 0.05, 0.03, 0.02, 0.02])


@dataclass(frozen=True)
class Profile:
    """One NGO's character, chosen from the seed by :func:`profile_for`."""

    tag: str  # client ids are f"{tag}-C{number:06d}"
    service_mix: tuple[float, ...]  # share of clients whose main service is each of SERVICES
    home_region: str
    regional_focus: float  # share of clients in home_region; the rest spread by population
    frequent_share: float  # share of clients with many episodes
    effectiveness: float  # multiplies every service's mean improvement

    def __post_init__(self) -> None:
        if not self.tag.isascii() or not self.tag.isalnum():
            raise ValueError(f"profile tag must be ASCII letters or digits, got {self.tag!r}")
        mix = self.service_mix
        if len(mix) != len(SERVICES) or min(mix) < 0 or sum(mix) <= 0:
            raise ValueError(f"service_mix needs {len(SERVICES)} shares >= 0, not all zero")
        if self.home_region not in REGIONS:
            raise ValueError(f"home_region must be one of {', '.join(REGIONS)}")
        if not (0 <= self.regional_focus <= 1 and 0 <= self.frequent_share <= 1):
            raise ValueError("regional_focus and frequent_share must be between 0 and 1")
        if not 0 <= self.effectiveness <= 3:
            raise ValueError("effectiveness must be between 0 and 3")


def _tag(seed: int) -> str:
    """Distinct seeds give distinct tags: base 26 in letters, at least two of them."""
    letters = ""
    while seed or len(letters) < 2:
        seed, digit = divmod(seed, 26)
        letters = chr(ord("A") + digit) + letters
    return letters


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")


def profile_for(seed: int) -> Profile:
    """The NGO a seed stands for: its service mix, regional focus and effectiveness.

    A main service is picked uniformly and given 45-80% of clients (25-40% for a
    generalist, one NGO in four); the other services share the rest by a
    Dirichlet draw. A home region is picked by population and holds 45-90% of
    clients (5-20% for a national NGO, one in five). Independent of ``clients``.
    """
    _check_seed(seed)
    rng = np.random.default_rng([seed, 1])
    main = int(rng.integers(len(SERVICES)))
    share = rng.uniform(0.25, 0.40) if rng.random() < 0.25 else rng.uniform(0.45, 0.80)
    rest = rng.dirichlet(np.full(len(SERVICES) - 1, 1.5)) * (1 - share)
    mix = np.insert(rest, main, share)
    home = int(rng.choice(len(REGIONS), p=_POPULATION / _POPULATION.sum()))
    focus = rng.uniform(0.05, 0.20) if rng.random() < 0.2 else rng.uniform(0.45, 0.90)
    return Profile(
        tag=_tag(seed),
        service_mix=tuple(round(float(m), 4) for m in mix),
        home_region=REGIONS[home],
        regional_focus=round(float(focus), 4),
        frequent_share=round(float(rng.uniform(0.15, 0.30)), 4),
        effectiveness=round(float(rng.uniform(0.8, 1.2)), 4),
    )


@dataclass(frozen=True)
class Records:
    """Generated records in columnar form: integer codes, one row per episode.

    Rows are grouped by client (``starts[c]`` is the first row of client ``c``),
    episodes in start order. Per-client arrays index the lists above; dates are
    days since FIRST_DAY (-1 for an open end); missing post scores are 0.
    Client ``c`` here is client number ``first_client + c + 1`` of the NGO.
    """

    profile: Profile
    first_client: int
    id_width: int  # digits in the client number
    starts: I64  # n_clients + 1 row offsets
    first_name: I64
    surname: I64
    address: I64  # (n_clients, 5): unit (0 = none), number, street, suffix, town
    age_band: I64
    gender: I64
    ethnicity: I64
    region: I64
    service: I64
    referral_source: I64
    episode_start: I64
    episode_end: I64
    sessions: I64
    circumstances_pre: I64
    circumstances_post: I64
    goals_pre: I64
    goals_post: I64

    @property
    def n_clients(self) -> int:
        return len(self.starts) - 1

    @property
    def n_rows(self) -> int:
        return int(self.starts[-1])

    def text_columns(self, first: int = 0, stop: int | None = None) -> dict[str, list[str]]:
        """Clients ``first..stop-1`` as CSV text, one list per column of COLUMNS."""
        stop = self.n_clients if stop is None else stop
        lo, hi = int(self.starts[first]), int(self.starts[stop])
        counts = np.diff(self.starts[first : stop + 1])
        base, tag, width = self.first_client + 1, self.profile.tag, self.id_width
        ids = np.array([f"{tag}-C{base + c:0{width}d}" for c in range(first, stop)])
        names = _FIRST[self.first_name[first:stop]] + " " + _SURNAME[self.surname[first:stop]]

        def per_client(values: npt.NDArray[np.object_]) -> list[str]:
            return list(np.repeat(values, counts).tolist())

        def per_row(table: npt.NDArray[np.object_], codes: I64) -> list[str]:
            return list(table[codes[lo:hi]].tolist())

        return {
            "client_id": per_client(ids.astype(object)),
            "client_name": per_client(names),
            "address": per_client(_table(_addresses(self.address[first:stop]))),
            "age_band": per_client(_table(AGE_BANDS)[self.age_band[first:stop]]),
            "gender": per_client(_table(GENDERS)[self.gender[first:stop]]),
            "ethnicity": per_client(_table(ETHNICITIES)[self.ethnicity[first:stop]]),
            "region": per_client(_table(REGIONS)[self.region[first:stop]]),
            "service": per_row(_table(SERVICES), self.service),
            "referral_source": per_row(_table(REFERRALS), self.referral_source),
            "episode_start": per_row(_DATES, self.episode_start),
            "episode_end": per_row(_DATES, self.episode_end),
            "sessions": per_row(_INTS, self.sessions),
            "circumstances_pre": per_row(_INTS, self.circumstances_pre),
            "circumstances_post": per_row(_SCORES, self.circumstances_post),
            "goals_pre": per_row(_INTS, self.goals_pre),
            "goals_post": per_row(_SCORES, self.goals_post),
        }


def _table(values: tuple[str, ...] | list[str]) -> npt.NDArray[np.object_]:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


# Lookup tables: code -> text. Index -1 of _DATES is "" (an open episode's end).
_DATES = _table([(FIRST_DAY + timedelta(days=d)).isoformat() for d in range(_N_DAYS)] + [""])
_INTS = _table([str(i) for i in range(61)])
_SCORES = _table(["", "1", "2", "3", "4", "5"])
_NAME_POOLS = [(*pool[:2], _NEUTRAL) for pool in _NAMES]  # (ethnicity, gender) -> first names
_FIRST = _table([n for pool in _NAME_POOLS for names in pool for n in names])
_SURNAME = _table([n for pool in _NAMES for n in pool[2]])
_TOWN_LIST = [t for r in REGIONS for t in _TOWNS[r]]


def _addresses(parts: I64) -> list[str]:
    return [
        f"{f'{u}/' if u else ''}{num} {_STREETS[s]} {_SUFFIXES[x]}, {_TOWN_LIST[t]}"
        for u, num, s, x, t in parts.tolist()
    ]


def _pick(rng: np.random.Generator, probs: F64, n: int) -> I64:
    """n draws from a categorical distribution, vectorised (inverse CDF)."""
    cdf = np.cumsum(probs / probs.sum())
    return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(probs) - 1)


def _pick_by(rng: np.random.Generator, table: F64, given: I64) -> I64:
    """One draw per element of ``given`` from the row ``table[given]``.

    Row r's CDF is stored shifted to [r, r + 1], so one searchsorted over the
    flattened table serves every row without an (n, k) temporary.
    """
    k = table.shape[1]
    cdf = np.cumsum(table / table.sum(axis=1, keepdims=True), axis=1)
    cdf[:, -1] = 1.0
    flat = (cdf + np.arange(len(table))[:, None]).ravel()
    hits: I64 = np.searchsorted(flat, given + rng.random(len(given)), side="right") - given * k
    out: I64 = np.minimum(hits, k - 1)
    return out


def _uniform_index(rng: np.random.Generator, offset: I64, size: I64) -> I64:
    return offset + (rng.random(len(offset)) * size).astype(np.int64)


def _blocks(clients: int, seed: int, profile: Profile | None) -> Iterator[Records]:
    """The records in blocks of BLOCK clients, each from its own random stream.

    Blocks keep memory flat for millions of clients; the output depends only on
    (clients, seed, profile) because BLOCK is fixed.
    """
    if isinstance(clients, bool) or not isinstance(clients, int):
        raise ValueError(f"clients must be a whole number, got {clients!r}")
    if not 1 <= clients <= MAX_CLIENTS:
        raise ValueError(f"clients must be between 1 and {MAX_CLIENTS:,}, got {clients:,}")
    _check_seed(seed)
    prof = profile if profile is not None else profile_for(seed)
    width = max(6, len(str(clients)))
    for block, first in enumerate(range(0, clients, BLOCK)):
        rng = np.random.default_rng([seed, 2, block])
        yield _block(prof, rng, first, min(BLOCK, clients - first), width)


def generate(clients: int, seed: int, profile: Profile | None = None) -> Records:
    """All episodes of ``clients`` synthetic clients of the NGO ``seed`` stands for.

    ``profile`` overrides the NGO that :func:`profile_for` picks from the seed.
    """
    parts = list(_blocks(clients, seed, profile))
    if len(parts) == 1:
        return parts[0]
    joined: dict[str, Any] = {"profile": parts[0].profile, "first_client": 0}
    joined["id_width"] = parts[0].id_width
    offsets = np.cumsum([0] + [p.n_rows for p in parts[:-1]])
    joined["starts"] = np.concatenate(
        [p.starts[:-1] + off for p, off in zip(parts, offsets, strict=True)]
        + [np.array([offsets[-1] + parts[-1].n_rows])]
    )
    for name in (f.name for f in fields(Records) if f.name not in joined):
        joined[name] = np.concatenate([getattr(p, name) for p in parts])
    return Records(**joined)


def _block(prof: Profile, rng: np.random.Generator, first: int, n: int, width: int) -> Records:
    """Clients ``first .. first + n - 1`` with all their episodes, drawn from ``rng``."""

    # Clients: main service, region, then demographics conditioned on them.
    main = _pick(rng, np.array(prof.service_mix), n)
    pop = _POPULATION / _POPULATION.sum()
    home = REGIONS.index(prof.home_region)
    region = np.where(rng.random(n) < prof.regional_focus, home, _pick(rng, pop, n))
    eth_table = np.array([np.array(_ETH_REGION.get(r, (1.0,) * 5)) * _ETH_BASE for r in REGIONS])
    ethnicity = _pick_by(rng, eth_table, region)
    age = _pick_by(rng, _AGE, main)
    gender = _pick_by(rng, _GENDER, main)

    # Names and addresses (code arrays; text is built when writing).
    pool_sizes = np.array([[len(names) for names in pool] for pool in _NAME_POOLS])
    pool_offsets = (np.cumsum(pool_sizes.ravel()) - pool_sizes.ravel()).reshape(pool_sizes.shape)
    first_name = _uniform_index(rng, pool_offsets[ethnicity, gender], pool_sizes[ethnicity, gender])
    sur_sizes = np.array([len(pool[2]) for pool in _NAMES])
    sur_offsets = np.cumsum(sur_sizes) - sur_sizes
    sur_pool = np.where(rng.random(n) < 0.3, ETHNICITIES.index("european_other"), ethnicity)
    surname = _uniform_index(rng, sur_offsets[sur_pool], sur_sizes[sur_pool])
    town_sizes = np.array([len(_TOWNS[r]) for r in REGIONS])
    town_offsets = np.cumsum(town_sizes) - town_sizes
    town = _uniform_index(rng, town_offsets[region], town_sizes[region])
    number = np.exp(rng.uniform(0, math.log(300), n)).astype(np.int64)  # small numbers commoner
    unit = np.where(rng.random(n) < 0.12, rng.integers(1, 9, n), 0)  # "3/41 Kauri Road"
    street = rng.integers(len(_STREETS), size=n)
    address = np.stack([unit, number, street, _pick(rng, _SUFFIX_P, n), town], axis=1)

    # Episodes per client: geometric truncated at 12 (inverse CDF, so no spike at
    # the cap), with a longer tail for "frequent" clients.
    q = np.log1p(-np.where(rng.random(n) < prof.frequent_share, 0.15, 0.42))
    tail = 1 - np.exp(q * MAX_EPISODES)
    counts = 1 + np.floor(np.log1p(-rng.random(n) * tail) / q).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    rows = int(starts[-1])
    owner = np.repeat(np.arange(n), counts)
    first_row = starts[:-1][owner]
    age_r = age[owner]

    # Service per episode: mostly the client's main service; age-appropriate.
    service = np.where(
        rng.random(rows) < 0.7, main[owner], _pick(rng, np.array(prof.service_mix), rows)
    )
    young, adult = age_r == 0, age_r >= 2
    child_ok = np.where(
        rng.random(rows) < 0.6, SERVICES.index("youth"), SERVICES.index("counselling")
    )
    adult_only = [SERVICES.index("budgeting"), SERVICES.index("housing")]
    service = np.where(young & np.isin(service, adult_only), child_ok, service)
    service = np.where(
        adult & (service == SERVICES.index("youth")), SERVICES.index("counselling"), service
    )
    referral = _pick_by(rng, _REFERRAL, service)

    # Dates: gaps between a client's episode starts, squeezed to fit the window.
    gap = np.where(np.arange(rows) == first_row, 0.0, 30 + rng.exponential(240, rows))
    offset = np.cumsum(gap)
    offset -= offset[first_row]
    span = offset[starts[1:] - 1]
    window = _LAST - 14.0
    scale = np.minimum(1.0, window / np.maximum(span, 1.0))
    begin = rng.random(n) * (window - span * scale)
    start = (begin[owner] + offset * scale[owner]).astype(np.int64)
    median, sigma = _DURATION[service, 0], _DURATION[service, 1]
    duration = np.clip(median * np.exp(sigma * rng.standard_normal(rows)), 7, 540).astype(np.int64)
    age_days = _LAST - start
    is_open = (start + duration > _LAST) | (rng.random(rows) < 0.8 * np.exp(-age_days / 365))
    end = np.where(is_open, -1, start + duration)

    # Sessions follow the (elapsed) duration at a service-specific weekly rate.
    weeks = np.minimum(duration, age_days) / 7
    lam = weeks * _RATE[service] * np.exp(0.35 * rng.standard_normal(rows))
    sessions = np.minimum(rng.poisson(lam), 60).astype(np.int64)

    # Pre scores: latent, correlated within client and between the two measures.
    client_level = rng.standard_normal((n, 2))[owner]
    z = 0.6 * client_level + 0.8 * rng.standard_normal((rows, 2))
    z[:, 1] = 0.5 * z[:, 0] + math.sqrt(0.75) * z[:, 1]
    z += _PRE_SHIFT[service]
    c_pre = np.searchsorted(_CUTS, z[:, 0]).astype(np.int64) + 1
    g_pre = np.searchsorted(_CUTS, z[:, 1]).astype(np.int64) + 1

    # Post scores: service effect x engagement x NGO effectiveness, plus noise.
    engaged = (0.35 + 0.65 * np.minimum(1.0, sessions / 6)) * prof.effectiveness

    def post(pre: I64, effect: F64) -> I64:
        change = engaged * effect[service, 0] + effect[service, 1] * rng.standard_normal(rows)
        return np.where(is_open, 0, np.clip(pre + np.rint(change), 1, 5)).astype(np.int64)

    return Records(
        profile=prof, first_client=first, id_width=width, starts=starts,
        first_name=first_name, surname=surname, address=address,
        age_band=age, gender=gender, ethnicity=ethnicity, region=region, service=service,
        referral_source=referral, episode_start=start, episode_end=end, sessions=sessions,
        circumstances_pre=c_pre, circumstances_post=post(c_pre, _EFFECT_CIRC),
        goals_pre=g_pre, goals_post=post(g_pre, _EFFECT_GOALS),
    )  # fmt: skip


def write_csv(path: pathlib.Path, clients: int, seed: int, profile: Profile | None = None) -> int:
    """Write the records as UTF-8 CSV with a header row; return the number of records.

    Streams block by block, so memory stays flat whatever ``clients`` is.
    """
    rows = 0
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for records in _blocks(clients, seed, profile):
            cols = records.text_columns()
            writer.writerows(zip(*(cols[c] for c in COLUMNS), strict=True))
            rows += records.n_rows
    return rows
