"""Small RDKit helpers shared by every module: parsing that returns None, canonical SMILES.

Parsing follows datamol's convention: a function that cannot parse returns ``None`` and the
caller decides what a failure means (a status column, an error, a skipped sample).
"""

from __future__ import annotations

from rdkit import Chem, RDLogger

# RDKit prints every parse failure to stderr; molgen reports failures as per-row statuses instead.
RDLogger.DisableLog("rdApp.*")


def parse_smiles(smiles: str | None) -> Chem.Mol | None:
    """Sanitized molecule for ``smiles``, or None when it is empty or RDKit rejects it."""
    if not smiles or not isinstance(smiles, str) or not smiles.strip():
        return None
    return Chem.MolFromSmiles(smiles.strip())


def explain_parse_failure(smiles: str | None) -> str:
    """Human-readable reason why :func:`parse_smiles` returned None for ``smiles``."""
    if smiles is None or not isinstance(smiles, str) or not smiles.strip():
        return "empty SMILES"
    text = smiles.strip()
    if "\ufffd" in text:
        return "SMILES contains bytes that are not valid UTF-8"
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
