"""Tokenizer round trip on every molecule of one or more files, and encode/decode throughput beside a
plain RDKit pass.

    python benchmarks/tokenizer_roundtrip.py [--files PATH ...] [--name NAME] [--repeats 3]
        [--throughput-rows 20000] [--aromatic-bonds] [--workers 2] [--max-atoms N]

Default: all of QM9. With --aromatic-bonds the vocabulary keeps aromatic bonds (results:
tokenizer_roundtrip_aromatic). MOSES train + test, as the drug-like model sees them:
``--files ../shared/data/moses/train.csv.gz ../shared/data/moses/test.csv.gz --aromatic-bonds --max-atoms 32
--name tokenizer_roundtrip_moses``.

Correctness: canonical SMILES of decode_raw(one-hot(encode(m))) must equal that of m for every row.
Throughput: molecules/s (median over repeats) on a fixed subset for encode (mol -> tokens),
decode_raw and decode_constrained (tokens -> mol), and, as the reference measured in the same run,
RDKit alone (SMILES -> mol -> canonical SMILES).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import numpy as np
from _common import SHARED_DATA, median_rate, write_results

from molgen.chemistry import canonical_smiles, parse_smiles
from molgen.decode import decode_constrained, decode_raw
from molgen.io import read_molecules
from molgen.tokenizer import Vocabulary, encode, molecular_graph


def graphs_of(smiles: list[str], aromatic_bonds: bool) -> list:
    out = []
    for text in smiles:
        mol = parse_smiles(text)
        out.append(None if mol is None else molecular_graph(mol, aromatic_bonds))
    return out


def failures_of(smiles: list[str], vocab_dict: dict) -> tuple[list[str], int, int]:
    """The SMILES whose canonical form does not survive encode -> one-hot -> decode_raw, how many
    molecules carry a formal charge, and how many of those failed."""
    vocab = Vocabulary.from_dict(vocab_dict)
    atom_eye, bond_eye = np.eye(vocab.num_atom_types), np.eye(vocab.num_bond_types)
    failed, charged, charged_failed = [], 0, 0
    for text in smiles:
        mol = parse_smiles(text)
        if mol is None:
            failed.append(text)
            continue
        is_charged = any(atom.GetFormalCharge() for atom in mol.GetAtoms())
        charged += is_charged
        tokens = encode(mol, vocab)
        decoded = decode_raw(atom_eye[tokens.atoms], bond_eye[tokens.bonds], vocab)
        if not (decoded.valid and canonical_smiles(decoded.mol) == canonical_smiles(mol)):
            failed.append(text)
            charged_failed += is_charged
    return failed, charged, charged_failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", nargs="+", default=[str(SHARED_DATA / "qm9.csv")])
    parser.add_argument("--name", default=None, help="Results name (default: tokenizer_roundtrip[_aromatic]).")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-atoms", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--throughput-rows", type=int, default=20_000)
    parser.add_argument("--aromatic-bonds", action="store_true", help="Aromatic bond type instead of kekulizing.")
    args = parser.parse_args()

    smiles = [text for path in args.files for chunk in read_molecules(path) for text in chunk.smiles]
    started = time.perf_counter()
    chunks = [smiles[i:i + 20_000] for i in range(0, len(smiles), 20_000)]
    with ProcessPoolExecutor(args.workers) as pool:
        graphs = [g for part in pool.map(partial(graphs_of, aromatic_bonds=args.aromatic_bonds), chunks) for g in part]
        unparsed = sum(g is None for g in graphs)
        vocab = Vocabulary.from_graphs((g for g in graphs if g is not None), max_atoms=args.max_atoms,
                                       aromatic_bonds=args.aromatic_bonds)
        del graphs
        parts = list(pool.map(partial(failures_of, vocab_dict=vocab.to_dict()), chunks))
    failures = [text for failed, _, _ in parts for text in failed]
    charged = sum(count for _, count, _ in parts)
    charged_failed = sum(count for _, _, count in parts)
    subset_smiles = smiles[: args.throughput_rows]
    mols = [parse_smiles(s) for s in subset_smiles]
    atom_eye, bond_eye = np.eye(vocab.num_atom_types), np.eye(vocab.num_bond_types)
    full_pass_s = time.perf_counter() - started

    subset_mols = [m for m in mols if m is not None]
    tokens = [encode(m, vocab) for m in subset_mols]
    one_hots = [(atom_eye[t.atoms], bond_eye[t.bonds]) for t in tokens]

    def rdkit_reference() -> int:
        return sum(1 for s in subset_smiles if canonical_smiles(parse_smiles(s)))

    rates = {
        "rdkit_parse_and_canonical_smiles": median_rate(rdkit_reference, args.repeats),
        "encode": median_rate(lambda: len([encode(m, vocab) for m in subset_mols]), args.repeats),
        "decode_raw": median_rate(lambda: len([decode_raw(a, b, vocab) for a, b in one_hots]), args.repeats),
        "decode_constrained": median_rate(
            lambda: len([decode_constrained(a, b, vocab) for a, b in one_hots]), args.repeats
        ),
    }
    payload = {
        "rows": len(smiles),
        "unparsed": unparsed,
        "round_trip_ok": len(smiles) - len(failures),
        "round_trip_fraction": (len(smiles) - len(failures)) / len(smiles),
        "files": args.files,
        "max_atoms": vocab.max_atoms,
        "charged_molecules": charged,
        "charged_round_trip_ok": charged - charged_failed,
        "failures": failures[:50],
        "vocabulary": vocab.labels,
        "bond_types": list(vocab.bond_types),
        "full_pass_seconds": full_pass_s,
        "throughput_rows": len(subset_mols),
        "molecules_per_second": {name: median for name, (median, _) in rates.items()},
        "molecules_per_second_all_repeats": {name: runs for name, (_, runs) in rates.items()},
    }
    rows = [
        ("round trip (canonical SMILES equal)", f"{payload['round_trip_ok']:,} / {len(smiles):,}"),
        ("of which charged", f"{payload['charged_round_trip_ok']:,} / {charged:,}"),
    ] + [(f"{name} (mol/s, median of {args.repeats})", f"{median:,.0f}") for name, (median, _) in rates.items()]
    name = args.name or ("tokenizer_roundtrip_aromatic" if args.aromatic_bonds else "tokenizer_roundtrip")
    sources = ", ".join(Path(path).name for path in args.files)
    write_results(name, payload, rows, (f"tokenizer on {sources} ({', '.join(vocab.bond_types[1:])} bonds)", "value"))


if __name__ == "__main__":
    main()
