"""Drawing true identities as column arrays, and rendering them to CSV field strings.

Names and ages follow the public US frequency tables that clkhash also ships; addresses come from
the invented parts in `address_parts`. Everything is drawn for all people at once so that a
million-person population costs a few numpy arrays rather than a million Python objects.
"""

from dataclasses import dataclass, fields
from functools import cache
from typing import Self

import numpy as np

from blindlink.synthetic.address_parts import STREET_NAMES, STREET_TYPES, TOWNS
from blindlink.synthetic.frequency_tables import read_counts

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

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Draw `size` values, each with its table frequency."""
        return self.values[rng.choice(len(self.values), size=size, p=self.probabilities)]


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

    def take(self, rows: np.ndarray) -> Self:
        return type(self)(**{f.name: getattr(self, f.name).take(rows) for f in fields(self)})

    def render(self) -> tuple[list[str], list[str], list[str]]:
        """(street_address, city, postcode) strings."""
        streets = _streets()[self.street].tolist()
        street_address = [
            f"{number} {street}"
            for number, street in zip(self.house_number.tolist(), streets, strict=True)
        ]
        names, postcodes, _ = _towns()
        return street_address, names[self.town].tolist(), postcodes[self.town].tolist()


def draw_addresses(rng: np.random.Generator, size: int) -> Addresses:
    """Draw addresses: low house numbers are most common, towns weighted by size."""
    house_number = np.minimum(rng.geometric(1 / _MEAN_HOUSE_NUMBER, size), 999)
    street = rng.integers(0, len(_streets()), size)
    town = rng.choice(len(TOWNS), size=size, p=_towns()[2])
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

    def take(self, rows: np.ndarray) -> Self:
        return type(self)(**{f.name: getattr(self, f.name).take(rows) for f in fields(self)})

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


def draw_birth_dates(rng: np.random.Generator, size: int) -> np.ndarray:
    """Birth dates for ages drawn from the clkhash age table, uniform within each year of age."""
    years = ages().draw(rng, size) + rng.random(size)
    return REFERENCE_DATE - np.floor(years * _DAYS_PER_YEAR).astype("timedelta64[D]")


def draw_people(rng: np.random.Generator, size: int) -> People:
    """Draw `size` independent people; given names follow the frequencies for their sex."""
    male = rng.random(size) < 0.5
    given_name = np.empty(size, dtype=object)
    given_name[male] = male_given_names().draw(rng, int(male.sum()))
    given_name[~male] = female_given_names().draw(rng, int((~male).sum()))
    return People(
        male=male,
        given_name=given_name,
        surname=surnames().draw(rng, size),
        birth_date=draw_birth_dates(rng, size),
        address=draw_addresses(rng, size),
    )
