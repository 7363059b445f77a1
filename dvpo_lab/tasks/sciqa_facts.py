"""The fact table behind ``task=sciqa task.source=generated``: a few hundred short science facts, built in code.

Each :class:`Fact` is a question, its answer and a category; a multiple-choice item takes its distractors
from the answers of other facts of the same category ("Symbol of Sodium?" gets other element symbols), so
the category never gives the answer away. Everything is plain printable ASCII, which the project's char
tokenizer covers, and short: the longest item renders to well under 120 characters.

Categories (about 380 facts): element symbols and names both ways and atomic numbers; unit conversions
("3 km = ? m", one category per multiplier so every option is a multiple of the same number); planet order
both ways; organ functions; cell parts; animal classes; gases; SI units, their symbols and quantities;
chemical formulas.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class Fact:
    question: str  # e.g. "Symbol of Sodium?"
    answer: str  # e.g. "Na"
    category: str  # distractors are other answers of this category


# (name, symbol, atomic number)
ELEMENTS = [
    ("Hydrogen", "H", 1),
    ("Helium", "He", 2),
    ("Lithium", "Li", 3),
    ("Beryllium", "Be", 4),
    ("Boron", "B", 5),
    ("Carbon", "C", 6),
    ("Nitrogen", "N", 7),
    ("Oxygen", "O", 8),
    ("Fluorine", "F", 9),
    ("Neon", "Ne", 10),
    ("Sodium", "Na", 11),
    ("Magnesium", "Mg", 12),
    ("Aluminium", "Al", 13),
    ("Silicon", "Si", 14),
    ("Phosphorus", "P", 15),
    ("Sulfur", "S", 16),
    ("Chlorine", "Cl", 17),
    ("Argon", "Ar", 18),
    ("Potassium", "K", 19),
    ("Calcium", "Ca", 20),
    ("Titanium", "Ti", 22),
    ("Chromium", "Cr", 24),
    ("Manganese", "Mn", 25),
    ("Iron", "Fe", 26),
    ("Cobalt", "Co", 27),
    ("Nickel", "Ni", 28),
    ("Copper", "Cu", 29),
    ("Zinc", "Zn", 30),
    ("Bromine", "Br", 35),
    ("Krypton", "Kr", 36),
    ("Silver", "Ag", 47),
    ("Tin", "Sn", 50),
    ("Iodine", "I", 53),
    ("Xenon", "Xe", 54),
    ("Platinum", "Pt", 78),
    ("Gold", "Au", 79),
    ("Mercury", "Hg", 80),
    ("Lead", "Pb", 82),
    ("Uranium", "U", 92),
]

# (from unit, to unit, factor): "n <from> = ? <to>" -> n * factor
CONVERSIONS = [
    ("km", "m", 1000),
    ("m", "cm", 100),
    ("m", "mm", 1000),
    ("cm", "mm", 10),
    ("kg", "g", 1000),
    ("g", "mg", 1000),
    ("L", "mL", 1000),
    ("h", "min", 60),
    ("min", "s", 60),
    ("h", "s", 3600),
    ("day", "h", 24),
    ("week", "days", 7),
    ("year", "months", 12),
    ("kW", "W", 1000),
    ("t", "kg", 1000),
]

PLANETS = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]

ORGANS = [
    ("pumps blood", "heart"),
    ("takes in oxygen", "lungs"),
    ("filters blood", "kidneys"),
    ("digests food", "stomach"),
    ("controls the body", "brain"),
    ("makes bile", "liver"),
    ("absorbs nutrients", "intestine"),
    ("senses light", "eye"),
    ("senses sound", "ear"),
    ("senses smell", "nose"),
    ("stores urine", "bladder"),
    ("makes insulin", "pancreas"),
    ("covers the body", "skin"),
    ("supports the body", "skeleton"),
]

CELL_PARTS = [
    ("Powerhouse of the cell?", "mitochondria"),
    ("Cell part holding DNA?", "nucleus"),
    ("Cell part making proteins?", "ribosome"),
    ("Plant cell part for photosynthesis?", "chloroplast"),
    ("Rigid layer of plant cells?", "cell wall"),
    ("Cell's outer layer?", "membrane"),
]

ANIMALS = {
    "mammal": ["whale", "dog", "bat", "dolphin", "horse", "cat", "mouse"],
    "bird": ["eagle", "penguin", "owl", "ostrich", "parrot"],
    "fish": ["shark", "salmon", "trout", "tuna"],
    "reptile": ["snake", "lizard", "turtle", "crocodile"],
    "amphibian": ["frog", "toad", "salamander", "newt"],
    "insect": ["bee", "ant", "butterfly", "beetle"],
    "arachnid": ["spider", "scorpion", "tick"],
}

GASES = [
    ("Gas plants take in?", "CO2"),
    ("Gas plants give off?", "O2"),
    ("Gas we breathe out?", "CO2"),
    ("Most common gas in air?", "N2"),
    ("Lightest gas?", "H2"),
    ("Gas in party balloons?", "He"),
    ("Main gas in natural gas?", "CH4"),
]

# (quantity, SI unit, unit symbol)
SI_UNITS = [
    ("force", "newton", "N"),
    ("energy", "joule", "J"),
    ("power", "watt", "W"),
    ("current", "ampere", "A"),
    ("voltage", "volt", "V"),
    ("resistance", "ohm", "ohm"),
    ("frequency", "hertz", "Hz"),
    ("pressure", "pascal", "Pa"),
    ("charge", "coulomb", "C"),
    ("mass", "kilogram", "kg"),
    ("time", "second", "s"),
    ("length", "metre", "m"),
    ("temperature", "kelvin", "K"),
    ("amount", "mole", "mol"),
]

FORMULAS = [
    ("water", "H2O"),
    ("carbon dioxide", "CO2"),
    ("table salt", "NaCl"),
    ("methane", "CH4"),
    ("ammonia", "NH3"),
    ("ozone", "O3"),
    ("glucose", "C6H12O6"),
    ("sulfuric acid", "H2SO4"),
    ("hydrochloric acid", "HCl"),
    ("baking soda", "NaHCO3"),
    ("chalk", "CaCO3"),
    ("rust", "Fe2O3"),
]

MULTIPLIERS = range(1, 10)


def build_facts() -> list[Fact]:
    """The whole table, in a fixed order (an item's identity is its index here)."""
    facts: list[Fact] = []
    for name, sym, z in ELEMENTS:
        facts.append(Fact(f"Symbol of {name}?", sym, "element_symbol"))
        facts.append(Fact(f"Element with symbol {sym}?", name, "element_name"))
        facts.append(Fact(f"Atomic number of {name}?", str(z), "atomic_number"))
    for n in MULTIPLIERS:
        for a, b, factor in CONVERSIONS:
            facts.append(Fact(f"{n} {a} = ? {b}", str(n * factor), f"units_x{n}"))
    for i, planet in enumerate(PLANETS, start=1):
        facts.append(Fact(f"Planet number {i} from the Sun?", planet, "planet"))
        facts.append(Fact(f"Position of {planet} from the Sun?", str(i), "planet_position"))
    facts += [Fact(f"Organ that {what}?", organ, "organ") for what, organ in ORGANS]
    facts += [Fact(q, a, "cell_part") for q, a in CELL_PARTS]
    facts += [Fact(f"A {animal} is a?", cls, "animal_class") for cls, names in ANIMALS.items() for animal in names]
    facts += [Fact(q, a, "gas") for q, a in GASES]
    for quantity, unit, symbol in SI_UNITS:
        facts.append(Fact(f"SI unit of {quantity}?", unit, "si_unit"))
        facts.append(Fact(f"Quantity measured in {unit}s?", quantity, "quantity"))
        if symbol != unit:
            facts.append(Fact(f"Symbol of the {unit}?", symbol, "unit_symbol"))
    facts += [Fact(f"Formula of {what}?", formula, "formula") for what, formula in FORMULAS]
    return facts


def category_pools(facts: list[Fact]) -> dict[str, list[str]]:
    """Distinct answers per category, sorted (a fixed order keeps distractor draws reproducible)."""
    pools: dict[str, set[str]] = defaultdict(set)
    for f in facts:
        pools[f.category].add(f.answer)
    return {c: sorted(answers) for c, answers in pools.items()}
