"""Drawing true identities as column arrays, and rendering them to CSV field strings.

Names and ages follow the public US frequency tables that clkhash also ships; addresses come from
the invented parts in `address_parts`. Person i is a pure function of the population key and i
(`randomness.uniforms`), drawn with numpy for a whole chunk of indices at once.
"""

from dataclasses import dataclass
from functools import cache, cached_property
from typing import Self

import numpy as np

from blindlink.synthetic.address_parts import STREET_NAMES, STREET_TYPES, TOWNS
from blindlink.synthetic.frequency_tables import read_counts
from blindlink.synthetic.randomness import uniforms

# Ages are counted back from a fixed day, not today, so that a seed gives the same files forever.
REFERENCE_DATE = np.datetime64("2025-01-01", "D")
_DAYS_PER_YEAR = 365.2425
_MEAN_HOUSE_NUMBER = 40

Columns = dict[str, list[str]]
"""CSV field name -> one string per record, for a chunk of records."""


@dataclass(frozen=True)
class FrequencyTable:
    """Values with their relative frequencies, for weighted draws."""

    values: np.ndarray  # names as an object array, so draws share the table's str objects
    probabilities: np.ndarray

    @classmethod
    def from_counts(cls, values: list[str], counts: list[float]) -> Self:
        weights = np.asarray(counts, dtype=np.float64)
        return cls(np.asarray(values, dtype=object), weights / weights.sum())

    @cached_property
    def cumulative(self) -> np.ndarray:
        return np.cumsum(self.probabilities)

    def pick(self, u: np.ndarray) -> np.ndarray:
        """The value at each uniform `u` in [0, 1): each value with its table frequency."""
        return self.values[self.index(u)]

    def index(self, u: np.ndarray) -> np.ndarray:
        """Table positions for uniforms `u` (the inverse of the cumulative distribution)."""
        return np.minimum(np.searchsorted(self.cumulative, u, side="right"), len(self.values) - 1)


def _table(name: str) -> FrequencyTable:
    rows = read_counts(name)
    return FrequencyTable.from_counts([value for value, _ in rows], [count for _, count in rows])


@cache
def surnames() -> FrequencyTable:
    return _table("last-names.csv")


@cache
def female_given_names() -> FrequencyTable:
    return _table("female-first-names.csv")


@cache
def male_given_names() -> FrequencyTable:
    return _table("male-first-names.csv")


@cache
def ages() -> FrequencyTable:
    table = _table("ages.csv")
    return FrequencyTable(table.values.astype(np.int64), table.probabilities)


@cache
def _streets() -> np.ndarray:
    return np.asarray([f"{name} {kind}" for name in STREET_NAMES for kind in STREET_TYPES], object)


@cache
def _towns() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(names, postcodes, probabilities); Zipf-like sizes give a few big towns and a long tail."""
    weights = 1.0 / np.arange(1, len(TOWNS) + 1)
    names, postcodes = (np.asarray(column, object) for column in zip(*TOWNS, strict=True))
    return names, postcodes, weights / weights.sum()


@dataclass(frozen=True)
class Addresses:
    """Street addresses as parallel arrays; `street` indexes "name type" pairs, `town` TOWNS."""

    house_number: np.ndarray
    street: np.ndarray
    town: np.ndarray

    def render(self) -> tuple[list[str], list[str], list[str]]:
        """(street_address, city, postcode) strings."""
        streets = _streets()[self.street].tolist()
        street_address = [
            f"{number} {street}"
            for number, street in zip(self.house_number.tolist(), streets, strict=True)
        ]
        names, postcodes, _ = _towns()
        return street_address, names[self.town].tolist(), postcodes[self.town].tolist()


ADDRESS_DRAWS = 3
"""Uniforms per address: house number, street, town."""


def draw_addresses(u: np.ndarray) -> Addresses:
    """Addresses from uniforms of shape (n, ADDRESS_DRAWS): low house numbers are most common
    (geometric, capped at 999), streets uniform, towns weighted by size."""
    p = 1 / _MEAN_HOUSE_NUMBER
    house_number = np.minimum(np.floor(np.log1p(-u[:, 0]) / np.log1p(-p)).astype(np.int64) + 1, 999)
    street = np.minimum((u[:, 1] * len(_streets())).astype(np.int64), len(_streets()) - 1)
    town = np.minimum(
        np.searchsorted(np.cumsum(_towns()[2]), u[:, 2], side="right"), len(TOWNS) - 1
    )
    return Addresses(house_number, street, town)


@dataclass(frozen=True)
class People:
    """True identities as parallel arrays (one element per person)."""

    male: np.ndarray
    given_name: np.ndarray
    surname: np.ndarray
    birth_date: np.ndarray  # datetime64[D]
    address: Addresses

    def __len__(self) -> int:
        return len(self.male)

    def render(self) -> Columns:
        """The people's CSV fields (all but `id`) as strings."""
        street_address, city, postcode = self.address.render()
        return {
            "given_name": self.given_name.tolist(),
            "surname": self.surname.tolist(),
            "date_of_birth": self.birth_date.astype(str).tolist(),
            "sex": np.where(self.male, "M", "F").tolist(),
            "street_address": street_address,
            "city": city,
            "postcode": postcode,
        }


PERSON_DRAWS = 5 + ADDRESS_DRAWS
"""Uniforms per person: sex, given name, surname, age, day within the year, address."""


def draw_people(key: np.uint64, index: np.ndarray) -> People:
    """The people with population indices `index` under `key`; given names follow the
    frequencies for their sex."""
    u = uniforms(key, index, PERSON_DRAWS)
    male = u[:, 0] < 0.5
    given_name = np.where(
        male, male_given_names().pick(u[:, 1]), female_given_names().pick(u[:, 1])
    )
    years = ages().pick(u[:, 3]) + u[:, 4]
    return People(
        male=male,
        given_name=given_name,
        surname=surnames().pick(u[:, 2]),
        birth_date=REFERENCE_DATE - np.floor(years * _DAYS_PER_YEAR).astype("timedelta64[D]"),
        address=draw_addresses(u[:, 5:]),
    )
