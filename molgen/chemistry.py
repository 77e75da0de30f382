"""Small RDKit helpers shared by every module: parsing that returns None, canonical SMILES.

Parsing follows datamol's convention: a function that cannot parse returns ``None`` and the
caller decides what a failure means (a status column, an error, a skipped sample).
"""

from __future__ import annotations

from rdkit import Chem, RDLogger

# RDKit prints every parse failure to stderr; molgen reports failures as per-row statuses instead.
RDLogger.DisableLog("rdApp.*")


# What may surround a SMILES in a cell or line; inside it, any whitespace means the cell is not one
# SMILES (RDKit would stop at the first blank and parse the rest as a name).
SURROUNDING_BLANKS = " \t\r\n"


def cell_problem(text: str) -> str | None:
    """Why ``text`` (already stripped of surrounding blanks) cannot be one whole SMILES, or None.

    A SMILES is printable ASCII without blanks (OpenSMILES). Anything else is reported here, before
    RDKit sees it, because RDKit silently parses a prefix: ``C<TAB>C``, ``\\x00C`` and
    ``C garbage`` all come back as methane.
    """
    if text.isascii() and text.isprintable() and " " not in text:
        return None  # the common case, checked without a loop
    for char in text:
        if "\udc80" <= char <= "\udcff":  # surrogateescape's stand-in for an undecodable byte
            return "SMILES contains bytes that are not valid UTF-8"
        if char.isspace():
            return f"whitespace inside {_shorten(text)!r}: a cell holds one SMILES"
        if not char.isprintable():
            return f"SMILES contains the control character U+{ord(char):04X}"
        if not char.isascii():
            return f"SMILES contains the non-ASCII character {char!r} (U+{ord(char):04X})"
    return None


def parse_smiles(smiles: str | None) -> Chem.Mol | None:
    """Sanitized molecule for ``smiles``, or None when it is empty, is not one whole SMILES
    (:func:`cell_problem`) or RDKit rejects it."""
    if not isinstance(smiles, str):
        return None
    text = smiles.strip(SURROUNDING_BLANKS)
    if not text or cell_problem(text):
        return None
    return Chem.MolFromSmiles(text)


def explain_parse_failure(smiles: str | None) -> str:
    """Human-readable reason why :func:`parse_smiles` returned None for ``smiles``."""
    text = smiles.strip(SURROUNDING_BLANKS) if isinstance(smiles, str) else ""
    if not text:
        return "empty SMILES"
    problem = cell_problem(text)
    if problem:
        return problem
    unsanitized = Chem.MolFromSmiles(text, sanitize=False)
    if unsanitized is None:
        return f"SMILES syntax error in {_shorten(text)!r}"
    try:
        Chem.SanitizeMol(unsanitized)
    except Exception as error:  # RDKit raises several unrelated exception types here
        return f"RDKit rejected {_shorten(text)!r}: {str(error).strip()}"
    return f"RDKit could not parse {_shorten(text)!r}"


def parse_smiles_with_reason(smiles: str | None) -> tuple[Chem.Mol | None, str | None]:
    """``(mol, None)`` on success, ``(None, reason)`` on failure."""
    mol = parse_smiles(smiles)
    if mol is None:
        return None, explain_parse_failure(smiles)
    return mol, None


def canonical_smiles(mol: Chem.Mol, isomeric: bool = True) -> str:
    return Chem.MolToSmiles(mol, isomericSmiles=isomeric)


def fragment_count(mol: Chem.Mol) -> int:
    return len(Chem.GetMolFrags(mol))


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
